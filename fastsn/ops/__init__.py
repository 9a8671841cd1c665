"""fastsn's functional ops: one module per op, each with its backend dispatch, fake kernel, autograd
registration and pure-PyTorch reference ``<op>_ref``."""
from fastsn.ops.bias_leaky_relu import bias_leaky_relu, bias_leaky_relu_ref
from fastsn.ops.build_info import BUILD_INFO_FIELDS, build_info, build_info_ref
from fastsn.ops.gradient_penalty import MODES, gradient_penalty_head, gradient_penalty_head_ref
from fastsn.ops.interpolate import interpolate, interpolate_ref
from fastsn.ops.mlp_input_gradient import mlp_input_gradient, mlp_input_gradient_ref
from fastsn.ops.minibatch_l1_similarity import minibatch_l1_similarity, minibatch_l1_similarity_ref
from fastsn.ops.minibatch_stddev import minibatch_stddev, minibatch_stddev_ref

__all__ = ["BUILD_INFO_FIELDS", "MODES", "bias_leaky_relu", "bias_leaky_relu_ref", "build_info", "build_info_ref",
           "gradient_penalty_head", "gradient_penalty_head_ref", "interpolate", "interpolate_ref",
           "minibatch_l1_similarity", "minibatch_l1_similarity_ref", "minibatch_stddev", "minibatch_stddev_ref",
           "mlp_input_gradient", "mlp_input_gradient_ref"]
