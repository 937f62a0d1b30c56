"""Build of the native field kernels (p2pinfer.zk._native); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "p2pinfer.zk._native",
            sources=["p2pinfer/zk/_native.c"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra"],
            extra_link_args=["-pthread"],
        )
    ],
)
