// The eager entry points of lenetx.functional: each parses torch.nn.functional's arguments and
// calls the operator through its typed dispatcher handle. torch.ops's call converts every
// argument to an IValue by the schema and back, about 2.5 us a call against 0.4 us for a batch-1
// pooling's kernel (benchmarks/NOTES.md, section 36); torch.nn.functional's own functions are C++
// bindings for the same reason. lenetx/functional.py hands __torch_function__ overrides on before
// calling these, and registers them with torch.compile as calls to keep in the graph: traced
// there, the dispatcher records the operators they call.
#include <Python.h>

#include <ATen/ATen.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <pybind11/pybind11.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

#include "operators.h"
#include "shape_checks.h"

namespace lenetx {
namespace {

using Pair = std::array<int64_t, 2>;

// A str's text; nullopt where it has none in UTF-8 (a lone surrogate).
std::optional<std::string> utf8(PyObject* text) {
  const char* bytes = PyUnicode_AsUTF8(text);
  if (bytes == nullptr) {
    PyErr_Clear();
    return std::nullopt;
  }
  return bytes;
}

std::string python_repr(PyObject* value) {
  std::optional<std::string> text;
  if (PyObject* repr = PyObject_Repr(value)) {
    text = utf8(repr);
    Py_DECREF(repr);
  } else {
    PyErr_Clear();
  }
  return text.value_or("<unprintable " + std::string(Py_TYPE(value)->tp_name) + ">");
}

const at::Tensor& tensor_argument(PyObject* value, const char* op, const char* name) {
  TORCH_CHECK_TYPE(THPVariable_Check(value), op, ": ", name, " must be a Tensor, but got ",
                   Py_TYPE(value)->tp_name);
  return THPVariable_Unpack(value);
}

std::optional<at::Tensor> optional_tensor_argument(PyObject* value, const char* op, const char* name) {
  if (value == Py_None) {
    return std::nullopt;
  }
  TORCH_CHECK_TYPE(THPVariable_Check(value), op, ": ", name, " must be a Tensor or None, but got ",
                   Py_TYPE(value)->tp_name);
  return THPVariable_Unpack(value);
}

// An int, or anything with __index__ (numpy's integers, torch.SymInt) but a bool, as torch's
// argument parser takes them.
std::optional<int64_t> as_int(PyObject* value) {
  if (PyBool_Check(value) || !PyIndex_Check(value)) {
    return std::nullopt;
  }
  const int64_t result = PyLong_AsLongLong(value);
  if (result == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return std::nullopt;
  }
  return result;
}

int64_t int_argument(PyObject* value, const char* name) {
  const auto result = as_int(value);
  TORCH_CHECK_TYPE(result.has_value(), name, " must be an int, but got ", name, "=", python_repr(value));
  return *result;
}

std::optional<int64_t> optional_int_argument(PyObject* value, const char* name) {
  if (value == Py_None) {
    return std::nullopt;
  }
  const auto result = as_int(value);
  TORCH_CHECK_TYPE(result.has_value(), name, " must be an int or None, but got ", name, "=", python_repr(value));
  return result;
}

bool bool_argument(PyObject* value, const char* name) {
  TORCH_CHECK_TYPE(PyBool_Check(value), name, " must be a bool, but got ", name, "=", python_repr(value));
  return value == Py_True;
}

// An int for both dimensions, or a tuple or list of one or two (torch.Size included).
Pair pair_argument(PyObject* value, const char* name) {
  if (const auto both = as_int(value)) {
    return {*both, *both};
  }
  const bool sequence = PyTuple_Check(value) || PyList_Check(value);
  const Py_ssize_t length = sequence ? PySequence_Fast_GET_SIZE(value) : 0;
  if (length == 1 || length == 2) {
    PyObject** items = PySequence_Fast_ITEMS(value);
    const auto first = as_int(items[0]);
    const auto second = as_int(items[length - 1]);
    if (first && second) {
      return {*first, *second};
    }
  }
  TORCH_CHECK_TYPE(false, name, " must be an int or a pair of ints, but got ", name, "=", python_repr(value));
}

bool is_empty_sequence(PyObject* value) {
  return (PyTuple_Check(value) || PyList_Check(value)) && PySequence_Fast_GET_SIZE(value) == 0;
}

struct PoolWindow {
  Pair kernel_size, stride, padding;
};

// stride None (or an empty sequence) means the kernel size, as in torch.nn.functional.
PoolWindow pool_window_arguments(PyObject* kernel_size, PyObject* stride, PyObject* padding) {
  PoolWindow window;
  window.kernel_size = pair_argument(kernel_size, "kernel_size");
  window.stride = stride == Py_None || is_empty_sequence(stride) ? window.kernel_size
                                                                   : pair_argument(stride, "stride");
  window.padding = pair_argument(padding, "padding");
  return window;
}

// A 3-D input is one unbatched image: the operators take a batch of one and the result loses it.
struct Batched {
  at::Tensor input;
  bool unbatched;

  at::Tensor result(at::Tensor output) const { return unbatched ? output.squeeze(0) : output; }
};

Batched batched(const at::Tensor& input, const char* op) {
  const int64_t dims = input.dim();
  TORCH_CHECK(dims == 3 || dims == 4, op, ": expected a 3-D (unbatched) or 4-D (batched) input, but got input of size ",
              input.sizes());
  return dims == 3 ? Batched{input.unsqueeze(0), true} : Batched{input, false};
}

// The kernels run without the GIL, as torch's bindings run theirs, so that other Python threads
// (a data loader's) go on meanwhile.
template <typename Call>
auto without_gil(Call&& call) {
  pybind11::gil_scoped_release no_gil;
  return call();
}

PyObject* wrap(at::Tensor tensor) { return THPVariable_Wrap(std::move(tensor)); }

PyObject* wrap(std::tuple<at::Tensor, at::Tensor> tensors) {
  PyObject* first = wrap(std::move(std::get<0>(tensors)));
  PyObject* second = first == nullptr ? nullptr : wrap(std::move(std::get<1>(tensors)));
  if (second == nullptr) {
    Py_XDECREF(first);
    return nullptr;
  }
  PyObject* pair = PyTuple_Pack(2, first, second);
  Py_DECREF(first);
  Py_DECREF(second);
  return pair;
}

// Arguments arrive positionally, every one: lenetx/functional.py binds the defaults.
void check_argument_count(Py_ssize_t count, Py_ssize_t expected, const char* op) {
  TORCH_CHECK_TYPE(count == expected, op, " takes ", expected, " positional arguments, but got ", count);
}

struct ConvArguments {
  at::Tensor input;
  Pair stride, padding, dilation;
};

// padding 'valid' is none; 'same' keeps the output the input's size, symmetric where the total
// is even and one more row or column at the bottom or right, padded onto the input, where odd.
ConvArguments conv_arguments(at::Tensor input, const at::Tensor& weight, PyObject* stride, PyObject* padding,
                             PyObject* dilation, const char* op) {
  ConvArguments arguments{std::move(input), pair_argument(stride, "stride"), {0, 0}, pair_argument(dilation, "dilation")};
  if (!PyUnicode_Check(padding)) {
    arguments.padding = pair_argument(padding, "padding");
    return arguments;
  }
  const auto mode = utf8(padding);
  if (mode == "valid") {
    return arguments;
  }
  TORCH_CHECK(mode == "same", op, ": invalid padding string ", python_repr(padding), "; expected 'same' or 'valid'");
  TORCH_CHECK(arguments.stride == Pair({1, 1}), op,
              ": padding='same' is not supported for strided convolutions, but got stride=(",
              arguments.stride[0], ", ", arguments.stride[1], ")");
  check_4d(weight, "weight", op);
  Pair odd{};
  for (int dim = 0; dim < 2; ++dim) {
    const int64_t total = arguments.dilation[dim] * (weight.size(2 + dim) - 1);
    arguments.padding[dim] = total / 2;
    odd[dim] = total % 2;
  }
  if (odd[0] || odd[1]) {
    arguments.input = at::constant_pad_nd(arguments.input, {0, odd[1], 0, odd[0]}, 0);
  }
  return arguments;
}

// The arguments conv2d and conv2d_relu_pool2d share, args[0] to args[6].
struct ConvCall {
  Batched batch;
  at::Tensor weight;
  std::optional<at::Tensor> bias;
  ConvArguments arguments;
  int64_t groups;
};

ConvCall conv_call(PyObject* const* args, const char* op) {
  const at::Tensor& input = tensor_argument(args[0], op, "input");
  const at::Tensor& weight = tensor_argument(args[1], op, "weight");
  auto bias = optional_tensor_argument(args[2], op, "bias");
  Batched batch = batched(input, op);
  ConvArguments arguments = conv_arguments(batch.input, weight, args[3], args[4], args[5], op);
  return {std::move(batch), weight, std::move(bias), std::move(arguments), int_argument(args[6], "groups")};
}

PyObject* conv2d(PyObject*, PyObject* const* args, Py_ssize_t count) {
  HANDLE_TH_ERRORS
  constexpr const char* op = "lenetx.conv2d";
  check_argument_count(count, 7, op);
  const ConvCall c = conv_call(args, op);
  const ConvArguments& a = c.arguments;
  at::Tensor output = without_gil(
      [&] { return conv2d_op().call(a.input, c.weight, c.bias, a.stride, a.padding, a.dilation, c.groups); });
  return wrap(c.batch.result(std::move(output)));
  END_HANDLE_TH_ERRORS
}

PyObject* conv2d_relu_pool2d(PyObject*, PyObject* const* args, Py_ssize_t count) {
  HANDLE_TH_ERRORS
  constexpr const char* op = "lenetx.conv2d_relu_pool2d";
  check_argument_count(count, 9, op);
  const ConvCall c = conv_call(args, op);
  const ConvArguments& a = c.arguments;
  const Pair pool_size = pair_argument(args[7], "pool_size");
  const bool max_pool = bool_argument(args[8], "max_pool");
  at::Tensor output = without_gil([&] {
    if (a.input.device().is_cpu()) {
      return std::get<0>(conv2d_relu_pool2d_op().call(a.input, c.weight, c.bias, a.stride, a.padding, a.dilation,
                                                      c.groups, pool_size, max_pool));
    }
    // The fused operator is CPU only: elsewhere the convolution, then the pooling of its ReLU.
    const at::Tensor conv = conv2d_op().call(a.input, c.weight, c.bias, a.stride, a.padding, a.dilation, c.groups);
    return max_pool ? std::get<0>(max_pool2d_with_indices_op().call(conv, pool_size, pool_size, {0, 0}, {1, 1},
                                                                    /*ceil_mode=*/false, /*relu_input=*/true))
                    : avg_pool2d_op().call(conv, pool_size, pool_size, {0, 0}, /*ceil_mode=*/false,
                                           /*count_include_pad=*/true, std::nullopt, /*relu_input=*/true);
  });
  return wrap(c.batch.result(std::move(output)));
  END_HANDLE_TH_ERRORS
}

PyObject* avg_pool2d(PyObject*, PyObject* const* args, Py_ssize_t count) {
  HANDLE_TH_ERRORS
  constexpr const char* op = "lenetx.avg_pool2d";
  check_argument_count(count, 8, op);
  const Batched batch = batched(tensor_argument(args[0], op, "input"), op);
  const PoolWindow w = pool_window_arguments(args[1], args[2], args[3]);
  const bool ceil_mode = bool_argument(args[4], "ceil_mode");
  const bool count_include_pad = bool_argument(args[5], "count_include_pad");
  const auto divisor_override = optional_int_argument(args[6], "divisor_override");
  const bool relu_input = bool_argument(args[7], "relu_input");
  at::Tensor output = without_gil([&] {
    return avg_pool2d_op().call(batch.input, w.kernel_size, w.stride, w.padding, ceil_mode, count_include_pad,
                                divisor_override, relu_input);
  });
  return wrap(batch.result(std::move(output)));
  END_HANDLE_TH_ERRORS
}

PyObject* max_pool2d_with_indices(PyObject*, PyObject* const* args, Py_ssize_t count) {
  HANDLE_TH_ERRORS
  constexpr const char* op = "lenetx.max_pool2d";
  check_argument_count(count, 7, op);
  const Batched batch = batched(tensor_argument(args[0], op, "input"), op);
  const PoolWindow w = pool_window_arguments(args[1], args[2], args[3]);
  const Pair dilation = pair_argument(args[4], "dilation");
  const bool ceil_mode = bool_argument(args[5], "ceil_mode");
  const bool relu_input = bool_argument(args[6], "relu_input");
  auto [output, indices] = without_gil([&] {
    return max_pool2d_with_indices_op().call(batch.input, w.kernel_size, w.stride, w.padding, dilation, ceil_mode,
                                             relu_input);
  });
  return wrap(std::make_tuple(batch.result(std::move(output)), batch.result(std::move(indices))));
  END_HANDLE_TH_ERRORS
}

// A None in output_size keeps that dimension's input size.
PyObject* adaptive_avg_pool2d(PyObject*, PyObject* const* args, Py_ssize_t count) {
  HANDLE_TH_ERRORS
  constexpr const char* op = "lenetx.adaptive_avg_pool2d";
  check_argument_count(count, 2, op);
  const Batched batch = batched(tensor_argument(args[0], op, "input"), op);
  PyObject* output_size = args[1];
  Pair size{};
  const bool pair = (PyTuple_Check(output_size) || PyList_Check(output_size)) &&
                    PySequence_Fast_GET_SIZE(output_size) == 2;
  if (pair && (PySequence_Fast_ITEMS(output_size)[0] == Py_None || PySequence_Fast_ITEMS(output_size)[1] == Py_None)) {
    for (int dim = 0; dim < 2; ++dim) {
      PyObject* item = PySequence_Fast_ITEMS(output_size)[dim];
      const auto value = item == Py_None
                             ? std::optional<int64_t>(batch.input.sym_size(2 + dim).guard_int(__FILE__, __LINE__))
                             : as_int(item);
      TORCH_CHECK_TYPE(value.has_value(), "output_size must be an int or a pair of ints (or None), but got output_size=",
                       python_repr(output_size));
      size[dim] = *value;
    }
  } else {
    size = pair_argument(output_size, "output_size");
  }
  at::Tensor output = without_gil([&] { return adaptive_avg_pool2d_op().call(batch.input, size); });
  return wrap(batch.result(std::move(output)));
  END_HANDLE_TH_ERRORS
}

#define LENETX_FASTCALL(function) reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(function))

PyMethodDef functional_methods[] = {
    {"conv2d", LENETX_FASTCALL(conv2d), METH_FASTCALL,
     "conv2d(input, weight, bias, stride, padding, dilation, groups): lenetx.functional.conv2d's eager call"},
    {"conv2d_relu_pool2d", LENETX_FASTCALL(conv2d_relu_pool2d), METH_FASTCALL,
     "conv2d_relu_pool2d(input, weight, bias, stride, padding, dilation, groups, pool_size, max_pool)"},
    {"avg_pool2d", LENETX_FASTCALL(avg_pool2d), METH_FASTCALL,
     "avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, relu_input)"},
    {"max_pool2d_with_indices", LENETX_FASTCALL(max_pool2d_with_indices), METH_FASTCALL,
     "max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode, relu_input)"},
    {"adaptive_avg_pool2d", LENETX_FASTCALL(adaptive_avg_pool2d), METH_FASTCALL,
     "adaptive_avg_pool2d(input, output_size)"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

int add_functional_methods(PyObject* module) { return PyModule_AddFunctions(module, functional_methods); }

}  // namespace lenetx
