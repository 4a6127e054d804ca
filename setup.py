"""d2-detr: DETR panoptic segmentation as a Detectron2 extension.

Detectron2 itself is not listed in ``install_requires``: the registry only carries the
``pb1-detectron2`` sdist, which must be installed with ``ext_modules=[]`` (see ``make install``).
"""

from setuptools import find_packages, setup

setup(
    name="d2_detr",
    version="0.1.0",
    description="DETR panoptic segmentation as a Detectron2 extension (concrete defects, COCO)",
    python_requires=">=3.10",
    packages=find_packages(include=["d2_detr", "d2_detr.*"]),
    package_data={"d2_detr.inspection": ["*.yaml"]},
    install_requires=[
        "torch==2.13.0",
        "torchvision==0.28.0",
        "numpy<2",
        "scipy",
        "scikit-image",
        "PyYAML",
        "opencv-python-headless",
        "pycocotools",
        "panopticapi-lite",
        "fvcore>=0.1.5,<0.1.6",
        "iopath",
        "Pillow",
        "pillow-heif",  # HEIC photos (phones): demo and converter readers
        "matplotlib",
        "termcolor",
        "yacs",
        "tabulate",
        "cloudpickle",
        "tqdm",
        "tensorboard",
        "omegaconf",
        "hydra-core",
        "psutil",
    ],
    extras_require={
        "dev": ["pytest", "black", "isort", "flake8", "onnx", "onnxruntime"],
        "bench": ["transformers>=5"],
    },
)
