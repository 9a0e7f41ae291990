# A lean PyInstaller hook for torch, in place of the one in pyinstaller-hooks-contrib.
#
# The contrib hook adds every torch submodule (about 2,300) as a hidden import, which
# doubles the analysis time and drags in compiler, export and distributed stacks the
# product never runs. Here torch's modules are found the normal way, by following the
# imports of the product and of torch itself; its shared libraries are collected
# whole, and its Python files also travel as source (TorchScript reads source).
import os

from PyInstaller.utils.hooks import PY_DYLIB_PATTERNS, collect_dynamic_libs, get_package_paths

module_collection_mode = "pyz+py"
warn_on_missing_hiddenimports = False
hiddenimports = []
binaries = collect_dynamic_libs("torch", search_patterns=PY_DYLIB_PATTERNS + ["*.so.*"])
# ``import torch`` checks that its shared-memory manager exists (POSIX only).
_shm_manager = os.path.join(get_package_paths("torch")[1], "bin", "torch_shm_manager")
if os.path.isfile(_shm_manager):
    binaries.append((_shm_manager, os.path.join("torch", "bin")))
# See the contrib hook: links from torch/lib to the top level confuse torch on Linux.
bindepend_symlink_suppression = ["**/torch/lib/*.so*"]
