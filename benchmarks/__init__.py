"""The benchmarks behind `segicl bench ...` and the README "Results"."""
# segicl's package init quiets a third-party notice that importing diffusers or peft would print (benchmarks import
# diffusers directly).
import segicl  # noqa: F401
