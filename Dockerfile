# The ecom2f cluster image: CUDA 13.0 toolkit, Python 3.11, the pinned torch and Ray of
# constraints.txt, and the project installed editable at /opt/ecom2f with its
# deformable-attention op compiled for sm_75, sm_80 (A100; A10G runs sm_80 code), sm_90 (H100) and compute_90 PTX.
#
# It follows the install path of scripts/setup_env.sh, which CI runs on every commit:
#   1. a venv; pip/setuptools/wheel, then torch + torchvision, under --constraint constraints.txt
#   2. pyproject's dependencies + the dev extra, under the same constraints
#   3. pip install --no-build-isolation --no-deps --editable .  (setup.py builds ecom2f._C)
# tests/cluster/test_dockerfile.py checks that correspondence statically. CI does not build
# this image (no container engine there); build it where docker runs (docs/cluster.md):
#   docker build -t ecom2f:0.1.0 .
#
# Jobs upload the Python code as their working directory (cluster/runtime_env.yaml, which
# excludes *.so); `ecom2f._C` then resolves to this image's build through the editable
# install's finder. C++/CUDA changes need a new image.

# torch 2.14.1 is the CUDA 13.0 build: the toolkit must match it to compile the op.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu22.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LANG=C.UTF-8
# python3.11 for the project; openssh-client and rsync for the Ray autoscaler on the head
# (it reaches worker hosts over SSH); g++ for the op's CPU kernels.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.11 python3.11-venv python3.11-dev g++ git openssh-client rsync ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# --- 1 and 2: the environment, keyed on the pins and the dependency lists (cached layer) ---
WORKDIR /opt/ecom2f
COPY constraints.txt pyproject.toml ./
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv
RUN python -m pip install --quiet --constraint constraints.txt pip setuptools wheel \
 && python -m pip install --quiet --constraint constraints.txt torch torchvision \
 && python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["dev"]))' > /tmp/requirements.txt \
 && python -m pip install --quiet --constraint constraints.txt --requirement /tmp/requirements.txt \
 && python -c 'import torch; assert torch.__version__.startswith("2.14.1"), torch.__version__; assert torch.version.cuda.startswith("13.0"), torch.version.cuda'

# --- 3: the project and its op: T4 (7.5), A100 / A10G (8.0), H100 (9.0), newer GPUs from PTX ---
ENV CUDA_HOME=/usr/local/cuda \
    TORCH_CUDA_ARCH_LIST="7.5;8.0;9.0+PTX" \
    ECOM2F_BUILD_CUDA=1 \
    MAX_JOBS=8
COPY . /opt/ecom2f
RUN python -m pip install --no-build-isolation --no-deps --editable . \
 && python -c 'import torch, ecom2f._C; assert torch._C._dispatch_has_kernel_for_dispatch_key("ecom2f::ms_deform_attn", "CUDA")' \
 && cuobjdump=$(python -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump"))') \
 && "$cuobjdump" --list-elf ecom2f/_C*.so | grep -q sm_80 \
 && "$cuobjdump" --list-elf ecom2f/_C*.so | grep -q sm_90 \
 && "$cuobjdump" --list-ptx ecom2f/_C*.so | grep -q sm_90

# Pretrained backbones (./weights/R-50.pkl, ./weights/swin_tiny_patch4_window7_224.pkl)
# come in with `COPY .` when present; jobs point model.backbone.weights at /opt/ecom2f/weights.
RUN mkdir -p /opt/ecom2f/weights

# The Ray cluster launcher runs its commands in this container as root (docker exec);
# KubeRay runs `ray start` itself.
WORKDIR /opt/ecom2f
CMD ["bash"]
