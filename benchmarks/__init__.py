"""The benchmarks behind `segicl bench ...` and the docs' results page."""
