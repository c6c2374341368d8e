"""Build hook: install ``nnunet_prune.pth`` next to the package.

The .pth file makes Python import ``_nnunet_prune_hook`` at start-up, which lets the stock nnU-Net commands
(`nnUNetv2_train`, `nnUNetv2_plan_and_preprocess`, `nnUNetv2_predict`, ...) find this package's trainers and
planners with no further step. Everything else about the build lives in pyproject.toml.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "nnunet_prune.pth"
PTH_CONTENT = "import _nnunet_prune_hook\n"


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            # PEP 660 editable wheels are assembled from the install tree, not from build_lib
            target = self.get_finalized_command("install").install_lib
        else:
            target = self.build_lib
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, PTH_NAME), "w") as f:
            f.write(PTH_CONTENT)

    def get_outputs(self, include_bytecode=1):
        outputs = super().get_outputs(include_bytecode)
        if not getattr(self, "editable_mode", False):
            outputs.append(os.path.join(self.build_lib, PTH_NAME))
        return outputs


setup(cmdclass={"build_py": build_py_with_pth})
