// Schemas of the fused denoising steps. The out= overloads return nothing (the wrappers return `out`): custom ops
// whose outputs alias an input cannot be functionalised by torch.compile, mutating ones returning () can.
// Alphas are cumulative (alpha-bar) as [B] tensors; the Python wrappers
// in oneformore/ops/denoise.py accept floats too and validate every argument.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(oneformore, m) {
  m.def(
      "ddim_step(Tensor x_t, Tensor eps, Tensor alpha_t, Tensor alpha_prev, float eta, Tensor? noise, "
      "float? clip_x0, Tensor? mask, Tensor? known) -> Tensor");
  m.def(
      "ddim_step.out(Tensor x_t, Tensor eps, Tensor alpha_t, Tensor alpha_prev, float eta, Tensor? noise, "
      "float? clip_x0, Tensor? mask, Tensor? known, *, Tensor(a!) out) -> ()");
  m.def(
      "ddpm_step(Tensor x_t, Tensor eps, Tensor alpha_t, Tensor alpha_prev, Tensor? noise, float? clip_x0, "
      "Tensor? mask, Tensor? known) -> Tensor");
  m.def(
      "ddpm_step.out(Tensor x_t, Tensor eps, Tensor alpha_t, Tensor alpha_prev, Tensor? noise, float? clip_x0, "
      "Tensor? mask, Tensor? known, *, Tensor(a!) out) -> ()");
}
