// Operator schemas of the lenetx namespace and the Python module that loads them.
// Kernels for each device register themselves beside their sources (cpu/, cuda/).
#include <Python.h>
#include <torch/library.h>

#include "cpu/simd.h"

// relu_input (pooling): the operator pools relu(input), and its backward masks the gradient
// where input <= 0, as relu's would; one pass over the input instead of three.
TORCH_LIBRARY(lenetx, m) {
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv2d_grad_input(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv2d_grad_weight(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
      "int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_grad_bias(Tensor grad_output) -> Tensor");

  // pool(relu(conv2d(...))) with a pool_size x pool_size window at stride pool_size, floor mode:
  // average pooling, or max pooling with max_pool. Returns the pooled output and a uint8 mask of
  // the convolution's output size: 1 where the gradient reaches the convolution. The backward
  // returns (grad_input, grad_weight, grad_bias); grad_input is empty unless input_grad.
  // CPU only: elsewhere lenetx.nn.conv_relu_pool composes conv2d and the relu_input pooling.
  m.def(
      "conv2d_relu_pool2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, int[2] pool_size, bool max_pool) -> (Tensor, Tensor)");
  m.def(
      "conv2d_relu_pool2d_backward(Tensor grad_output, Tensor mask, Tensor input, Tensor weight, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, int[2] pool_size, bool max_pool, "
      "bool input_grad) -> (Tensor, Tensor, Tensor)");

  // Fully connected layers with ReLU between them (none after the last): layer l computes
  // x @ weights[l]^T + biases[l] on the previous layer's ReLU output, the first on input
  // (N, in_features). Returns the last layer's output and, for the backward, every other layer's
  // output after its ReLU. The backward returns (grad_input, grad_weights, grad_biases), a bias
  // gradient for every layer; grad_input is empty unless input_grad. CPU only: elsewhere
  // lenetx.functional.mlp composes torch's linear and relu.
  m.def("mlp(Tensor input, Tensor[] weights, Tensor?[] biases) -> (Tensor, Tensor[])");
  m.def(
      "mlp_backward(Tensor grad_output, Tensor input, Tensor[] weights, Tensor[] hidden, bool input_grad) "
      "-> (Tensor, Tensor[], Tensor[])");

  m.def(
      "avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
      "bool ceil_mode, bool count_include_pad, int? divisor_override, bool relu_input=False) -> Tensor");
  m.def(
      "avg_pool2d_backward(Tensor grad_output, Tensor input, int[2] kernel_size, int[2] stride, "
      "int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override, "
      "bool relu_input=False) -> Tensor");

  m.def(
      "max_pool2d_with_indices(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
      "int[2] dilation, bool ceil_mode, bool relu_input=False) -> (Tensor, Tensor)");
  m.def(
      "max_pool2d_backward(Tensor grad_output, Tensor input, Tensor indices, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode, bool relu_input=False) -> Tensor");

  m.def("adaptive_avg_pool2d(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, Tensor input) -> Tensor");

  // A batch of a dataset's images (uint8 or float32 in [0, 255], N x C x H x W), as float32
  // (value - mean[c]) / std[c]: images[index[i]], each the window of its copy zero-padded by
  // `padding` on every side whose top left corner is (row_offsets[i], col_offsets[i]) (the
  // unshifted window, (padding, padding), where they are None), mirrored left to right where
  // flip[i]. CPU only: the training loop makes its batches there (lenetx.data.BatchLoader).
  m.def(
      "crop_normalize(Tensor images, Tensor index, Tensor? row_offsets, Tensor? col_offsets, Tensor? flip, "
      "int padding, Tensor mean, Tensor std) -> Tensor");
}

namespace lenetx {
int add_functional_methods(PyObject* module);  // python_functional.cpp
}  // namespace lenetx

namespace {

PyObject* cpu_capability(PyObject*, PyObject*) {
  return PyUnicode_FromString(lenetx::cpu::isa_name(lenetx::cpu::convolution_isa()));
}

PyMethodDef methods[] = {
    {"cpu_capability", cpu_capability, METH_NOARGS,
     "The instruction set of the convolution kernels in use (LENETX_CPU_ISA can lower it)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* created = PyModule_Create(&module);
  if (created != nullptr && lenetx::add_functional_methods(created) != 0) {
    Py_DECREF(created);
    return nullptr;
  }
  return created;
}
