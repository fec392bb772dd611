"""The `segicl` command line: the commands of both engines, the benchmarks and the exports, registered in one place."""
import os

# Nothing is ever downloaded: without these, a hub lookup takes ~50 s to fail on a machine without network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# segicl's package init quiets a third-party notice that importing diffusers or peft would print; import it first so
# that every command, whatever it imports next, gets that.
import segicl  # noqa: E402,F401
