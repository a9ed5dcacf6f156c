"""Builds the C core, taskbound._taskbound, from src/."""

import os
from glob import glob

from setuptools import Extension, setup

compile_args = ["-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-Wno-missing-field-initializers", "-Werror"]
link_args = []
if os.environ.get("TASKBOUND_SANITIZE") == "1":
    sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                "-fno-sanitize-recover=undefined"]
    compile_args += sanitize + ["-O1", "-g"]
    link_args += sanitize

setup(
    ext_modules=[
        Extension(
            "taskbound._taskbound",
            sources=sorted(glob("src/*.c") + glob("src/*/*.c")),
            depends=sorted(glob("src/*/*.h")),
            include_dirs=["src"],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ],
)
