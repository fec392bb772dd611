"""The `segicl` command line: the commands of both engines, the benchmarks and the exports, registered in one place."""
