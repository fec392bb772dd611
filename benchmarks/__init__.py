"""The benchmarks behind `segicl bench ...` and the docs' results page."""
# segicl's package init quiets a third-party notice that importing diffusers or peft would print (benchmarks import
# diffusers directly, before any segicl module).
import segicl  # noqa: F401
