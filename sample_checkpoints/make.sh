#!/usr/bin/env bash
# Regenerates every checkpoint in sample_checkpoints/ with the exact commands below.
# Run from the repository root: bash sample_checkpoints/make.sh  (about 45 minutes on 2 CPU cores,
# 40 of them the two GPTs).
# Threads are fixed so the files come out byte-identical on the same kind of machine
# (tests/test_samples.py regenerates one of them and compares bytes).
set -euo pipefail
LPA=${LPA:-lpa}
S=sample_checkpoints
COMMON="--seed 0 --threads 2 --force --quiet"

# Residual MLP, the paper's stripe surface exp(-5(x^2+y^2)) sin(10x): 8 blocks, width 64.
$LPA train --arch mlp --task surface:stripe --objective lpa --depth 8 --width 64 --steps 2000 $COMMON -o $S/mlp-stripe-lpa.safetensors
$LPA train --arch mlp --task surface:stripe --objective e2e --depth 8 --width 64 --steps 2000 $COMMON -o $S/mlp-stripe-e2e.safetensors

# ResNet and ViT on scikit-learn's digits: 6 blocks.
$LPA train --arch resnet --task digits --objective lpa --depth 6 --width 32 --steps 300 --batch-size 128 $COMMON -o $S/resnet-digits-lpa.safetensors
$LPA train --arch resnet --task digits --objective e2e --depth 6 --width 32 --steps 300 --batch-size 128 $COMMON -o $S/resnet-digits-e2e.safetensors
$LPA train --arch vit --task digits --objective lpa --depth 6 --width 64 --steps 300 --batch-size 128 $COMMON -o $S/vit-digits-lpa.safetensors
$LPA train --arch vit --task digits --objective e2e --depth 6 --width 64 --steps 300 --batch-size 128 $COMMON -o $S/vit-digits-e2e.safetensors

# Byte-level GPT on the built-in corpus: 8 blocks, width 96, context 128, a window at every byte
# (stride 1, so no text is tied to one position), 4,000 steps, long enough
# that the final depth writes the licences' words (the README's generate example runs on it).
$LPA train --arch gpt --task text --set task.options.context=128 --set task.options.stride=1 --objective lpa --depth 8 --width 96 --steps 4000 --batch-size 32 $COMMON -o $S/gpt-text-lpa.safetensors
$LPA train --arch gpt --task text --set task.options.context=128 --set task.options.stride=1 --objective e2e --depth 8 --width 96 --steps 4000 --batch-size 32 $COMMON -o $S/gpt-text-e2e.safetensors
