#!/usr/bin/env bash
# The whole test suite, with everything it needs installed first:
#   - Mesa's lavapipe (Vulkan on the CPU) for the wgpu parity tests;
#   - PoCL (OpenCL on the CPU) to execute the CUDA kernels as OpenCL C;
#   - NVRTC and ptxas from the PyPI wheels, into .tools/cuda, to compile every kernel;
#   - Gymnasium and MuJoCo 3.17.0 in a virtual environment, .tools/gym, for the bridge's tests
#     (--env gym:ID) and the native MuJoCo tasks (built with --features mujoco, linked
#     against the wheel's libmujoco).
# Idempotent: installs only what is missing. Needs root (or sudo) for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

pkgs=(mesa-vulkan-drivers libvulkan1 pocl-opencl-icd ocl-icd-libopencl1)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

tools=$root/.tools/cuda
cu=$tools/nvidia/cu13
if [ ! -x "$cu/bin/ptxas" ] || ! ls "$cu"/lib/libnvrtc.so* >/dev/null 2>&1; then
  echo "installing NVRTC and ptxas wheels into $tools"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$tools" \
    nvidia-cuda-nvrtc==13.5.37 nvidia-cuda-nvcc==13.5.37
fi
# The Gymnasium bridge's tests compare against real Gymnasium (version pinned: the native
# environments' fixtures were recorded with it).
gym=$root/.tools/gym
if ! "$gym/bin/python" -c "import gymnasium, numpy, mujoco, gymnasium.envs.mujoco" >/dev/null 2>&1; then
  echo "installing Gymnasium and MuJoCo into $gym"
  python3 -m venv "$gym"
  "$gym/bin/python" -m pip install --quiet --disable-pip-version-check \
    gymnasium==1.4.0 numpy==2.4.6 mujoco==3.17.0 imageio packaging
fi
export MBRL_GPU_PYTHON=$gym/bin/python
# The serve client is a pip package (python/pyproject.toml, standard library only): install
# it the way users do, then run its unit tests with that interpreter.
if ! "$gym/bin/python" -c "import mbrl_gpu.client" >/dev/null 2>&1; then
  echo "installing the mbrl-gpu Python client into $gym"
  "$gym/bin/python" -m pip install --quiet --disable-pip-version-check ./python
fi
(cd "$root/python/tests" && PYTHONPATH="$root/python" "$gym/bin/python" -m unittest -q test_client)
# mujoco-rs links MUJOCO_DYNAMIC_LINK_DIR/libmujoco.so; the wheel ships only the versioned
# file, so a folder of our own holds the link (build.rs adds the rpath to the wheel).
mjlib=$("$gym/bin/python" -c "import mujoco, os; print(os.path.join(os.path.dirname(mujoco.__file__), 'libmujoco.so.' + mujoco.__version__))")
mkdir -p "$root/.tools/mujoco"
ln -sf "$mjlib" "$root/.tools/mujoco/libmujoco.so"
export MUJOCO_DYNAMIC_LINK_DIR=$root/.tools/mujoco

# Mesa's implicit device-select layer prints XDG_RUNTIME_DIR errors on headless machines.
export NODEVICE_SELECT=1
export MBRL_CUDA_TOOLS=$cu
export LD_LIBRARY_PATH=$cu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

cargo test --all-targets --features mujoco "$@"
