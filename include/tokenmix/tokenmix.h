// tokenmix/tokenmix.h: umbrella header (core, I/O, kernels, streaming, every layer family).
#pragma once

#include "tokenmix/core/cpu.h"
#include "tokenmix/core/error.h"
#include "tokenmix/core/tensor.h"
#include "tokenmix/core/threads.h"
#include "tokenmix/io/safetensors.h"
#include "tokenmix/io/state_dict.h"
#include "tokenmix/kernels/activations.h"
#include "tokenmix/kernels/attention.h"
#include "tokenmix/kernels/linear.h"
#include "tokenmix/layers/continual_mha.h"
#include "tokenmix/layers/espnet_mha.h"
#include "tokenmix/layers/fastformer.h"
#include "tokenmix/layers/hypermixing.h"
#include "tokenmix/layers/primer_ez.h"
#include "tokenmix/layers/registry.h"
#include "tokenmix/streaming/stream.h"
