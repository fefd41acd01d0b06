"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"), multistep, data prediction,
as ComfyUI runs it for `uni_pc` (B(h) = h, "bh1") and `uni_pc_bh2` (B(h) = e^h - 1).

The solver works in variance-preserving space with time t = sigma: alpha_t = 1/sqrt(1 + sigma^2),
std_t = sigma * alpha_t, lambda_t = log(alpha_t / std_t). Order min(3, steps - 1), lowered on the final
steps; the corrector runs on every step but the last; a final sigma of 0 is replaced by 0.001.
"""

from __future__ import annotations

import torch


def _log_alpha(sigma):
    return 0.5 * torch.log(1 / (sigma * sigma + 1))


def _alpha(sigma):
    return torch.exp(_log_alpha(sigma))


def _std(sigma):
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(sigma)))


def _lambda(sigma):
    log_alpha = _log_alpha(sigma)
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def _dims(v, ndim):
    return v[(...,) + (None,) * (ndim - 1)]


class _UniPC:
    def __init__(self, model, variant: str):
        self.model = model
        self.variant = variant

    def data_prediction(self, x, t):
        sigma = _dims(t, x.ndim)
        scaled = x * (sigma ** 2 + 1.0) ** 0.5
        eps = (scaled - self.model(scaled, t)) / sigma
        return (x - _dims(_std(t), x.ndim) * eps) / _dims(_alpha(t), x.ndim)

    def update(self, x, model_prev, t_prev, t, order: int, use_corrector: bool):
        dims = x.dim()
        t_prev_0, model_prev_0 = t_prev[-1], model_prev[-1]
        lambda_prev_0, lambda_t = _lambda(t_prev_0), _lambda(t)
        sigma_prev_0, sigma_t = _std(t_prev_0), _std(t)
        alpha_t = torch.exp(_log_alpha(t))
        h = lambda_t - lambda_prev_0

        rks, d1s = [], []
        for i in range(1, order):
            rk = ((_lambda(t_prev[-(i + 1)]) - lambda_prev_0) / h)[0]
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - model_prev_0) / rk)
        rks.append(1.0)
        rks = torch.tensor(rks, device=x.device)

        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        rows, b, factorial = [], [], 1
        for i in range(1, order + 1):
            rows.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        R = torch.stack(rows)
        b = torch.tensor(b, device=x.device)

        D1s = torch.stack(d1s, dim=1) if d1s else None
        if D1s is not None:
            rhos_p = torch.tensor([0.5], device=x.device) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
        if use_corrector:
            rhos_c = torch.tensor([0.5], device=x.device) if order == 1 else torch.linalg.solve(R, b)

        x_t_ = _dims(sigma_t / sigma_prev_0, dims) * x - _dims(alpha_t * h_phi_1, dims) * model_prev_0
        pred_res = torch.einsum("k,bkchw->bchw", rhos_p, D1s) if D1s is not None else 0
        x_t = x_t_ - _dims(alpha_t * b_h, dims) * pred_res
        model_t = None
        if use_corrector:
            model_t = self.data_prediction(x_t, t)
            corr_res = torch.einsum("k,bkchw->bchw", rhos_c[:-1], D1s) if D1s is not None else 0
            x_t = x_t_ - _dims(alpha_t * b_h, dims) * (corr_res + rhos_c[-1] * (model_t - model_prev_0))
        return x_t, model_t

    def sample(self, x, timesteps, order: int, callback):
        steps = len(timesteps) - 1
        batch = x.shape[0]
        model_prev, t_prev = [], []
        for step_index in range(steps):
            if step_index == 0:
                vec_t = timesteps[0].expand(batch)
                model_prev, t_prev = [self.data_prediction(x, vec_t)], [vec_t]
            elif step_index < order:
                vec_t = timesteps[step_index].expand(batch)
                x, model_x = self.update(x, model_prev, t_prev, vec_t, step_index, use_corrector=True)
                model_prev.append(model_x if model_x is not None else self.data_prediction(x, vec_t))
                t_prev.append(vec_t)
            else:
                last = step_index + (1 if step_index == steps - 1 else 0)
                for step in range(step_index, last + 1):
                    vec_t = timesteps[step].expand(batch)
                    step_order = min(order, steps + 1 - step)
                    x, model_x = self.update(x, model_prev, t_prev, vec_t, step_order, use_corrector=step != steps)
                    for i in range(order - 1):
                        t_prev[i], model_prev[i] = t_prev[i + 1], model_prev[i + 1]
                    t_prev[-1] = vec_t
                    if step < steps:
                        model_prev[-1] = model_x if model_x is not None else self.data_prediction(x, vec_t)
            callback(step_index)
        return x


def _sample(model, x, sigmas, callback, variant: str):
    timesteps = sigmas.clone()
    if timesteps[-1] == 0:
        timesteps[-1] = 0.001
    x = x / torch.sqrt(1.0 + timesteps[0] ** 2.0)
    order = max(1, min(3, len(timesteps) - 2))
    x = _UniPC(model, variant).sample(x, timesteps, order, callback)
    return x / _alpha(timesteps[-1])


def sample_unipc(model, x, sigmas, seed_noise, callback):
    return _sample(model, x, sigmas, callback, "bh1")


def sample_unipc_bh2(model, x, sigmas, seed_noise, callback):
    return _sample(model, x, sigmas, callback, "bh2")
