"""python -m pydl info   -- what this pydl build contains and what can run here."""
from __future__ import annotations

import argparse
import platform
import sys


def info() -> str:
    import torch

    import pydl
    b = pydl.BUILD_INFO
    lines = [f"pydl {pydl.__version__}  ({pydl.__file__.rsplit('/', 1)[0]})",
             f"python {platform.python_version()}, torch {torch.__version__}"
             f" (CUDA {torch.version.cuda or '-'}, cuDNN "
             f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else '-'})"]
    try:
        import triton
        lines.append(f"triton {triton.__version__}")
    except ImportError:
        lines.append("triton: not installed")
    if b["compiled_backends"]:
        lines.append(f"pydl._C: built with torch {b['torch_version']}, compiler {b['compiler']}"
                     f"{', DEBUG' if b['debug'] else ''}; compiled backends: "
                     f"{', '.join(b['compiled_backends'])}"
                     + (f"; CUDA {b['cuda_version']} for sm {b['cuda_arch_list']}" if b["cuda_version"] else ""))
    else:
        lines.append("pydl._C: NOT LOADED")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(f"device: {p.name} (sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
                     f"{p.total_memory / 2**30:.0f} GiB)")
    else:
        lines.append("device: no GPU visible (CPU only)")
    lines.append("backends:")
    for name, st in pydl.backends().items():
        state = "usable on " + "+".join(st.devices) if st.usable else \
            ("compiled, not usable here" if st.compiled else "not available")
        lines.append(f"  {name:<7} {state:<28} {st.detail}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pydl", description=__doc__)
    ap.add_argument("command", choices=["info"], help="info: build, versions, backends, device")
    ap.parse_args(argv)
    print(info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
