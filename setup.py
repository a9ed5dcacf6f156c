"""Builds the C core, taskbound._taskbound, from src/."""

import os
from glob import glob

from setuptools import Extension, setup

compile_args = ["-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-Wno-missing-field-initializers"]
# Warnings are errors: CI and every build here are held to that. A compiler
# newer than the ones tested may warn about what these did not; there
# TASKBOUND_WERROR=0 lets the install go ahead (and the warning is worth a
# report).
if os.environ.get("TASKBOUND_WERROR", "1") != "0":
    compile_args.append("-Werror")
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
