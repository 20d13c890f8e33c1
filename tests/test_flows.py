"""Flows: layers invert and their log-determinants match a brute-force Jacobian; act-norm's data-dependent
initialization; RealNVP and Glow save, load, sample and train through their scripts."""

import json
import math

import pytest
import torch
from conftest import run_script

from gm_hub.flows import (
    ActNorm,
    AffineCoupling,
    InvertibleConv1x1,
    LogitTransform,
    PlanarFlow,
    RadialFlow,
    Split,
    Squeeze,
    VariationalDequantizer,
    dequantize,
)
from gm_hub.hub import ConfigError
from gm_hub.models.glow import Glow, GlowConfig
from gm_hub.models.realnvp import RealNVP, RealNVPConfig
from gm_hub.models.vae import VAE, VAEConfig
from gm_hub.training import parse_args

TINY_REALNVP = RealNVPConfig(resolution=8, num_scales=2, num_couplings=1, hidden_channels=8)
TINY_GLOW = GlowConfig(resolution=8, num_levels=2, num_steps=2, hidden_channels=8)
MODELS = {"realnvp": (RealNVP, TINY_REALNVP), "glow": (Glow, TINY_GLOW)}
# Glow as [1] has it: centred pixels, no bound on the coupling's shift.
VARIANTS = {**MODELS, "glow, centred, unbounded shift": (Glow, GlowConfig(**{**vars(TINY_GLOW), "logit_alpha": None,
                                                                           "coupling_max_shift": None}))}
# Flow++'s learned noise in place of uniform noise.
VARIATIONAL = {"realnvp, variational": (RealNVP, RealNVPConfig(**{**vars(TINY_REALNVP), "dequantization": "variational"})),
               "glow, variational": (Glow, GlowConfig(**{**vars(TINY_GLOW), "dequantization": "variational",
                                                         "dequantizer_channels": 4}))}
SCRIPT_FLAGS = {
    "realnvp": ["--num_scales", "2", "--num_couplings", "1"],
    "glow": ["--num_levels", "2", "--num_steps", "1"],
}
COMMON_FLAGS = ["--hidden_channels", "8", "--train_batch_size", "8", "--max_train_steps", "2", "--max_eval_items", "16",
                "--num_sample_images", "4", "--save_images_steps", "0", "--logging_steps", "1", "--lr_warmup_steps", "0"]


def random_images(batch: int, config, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, config.num_channels, config.resolution, config.resolution)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)


@torch.no_grad()
def perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its initialization (zero convolutions make fresh couplings the identity)."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in module.parameters():
        parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return module


def brute_force_log_det(function, x: torch.Tensor) -> float:
    """log|det J| of function: x (1, ...) -> flat output, from the full Jacobian (float64)."""
    jacobian = torch.autograd.functional.jacobian(lambda flat: function(flat.view_as(x)).flatten(), x.flatten())
    return torch.linalg.slogdet(jacobian).logabsdet.item()


def make_model(name: str):
    model_class, config = {**VARIANTS, **VARIATIONAL}[name]
    torch.manual_seed(0)
    return model_class(config)


# --- invertibility and log-determinants -------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_decode_inverts_encode(name):
    model = make_model(name)
    model.initialize_from_data({"images": random_images(16, model.config)})
    perturb(model, scale=0.05).eval()
    y = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = model.encode(y)
        assert z.shape == (4, 64)
        assert (model.decode(z) - y).abs().max().item() < 1e-4
        assert (model.encode(model.decode(z)) - z).abs().max().item() < 1e-3


LAYERS = {
    "checkerboard coupling, parity 0": lambda: AffineCoupling(2, 4, checkerboard=True, parity=0),
    "checkerboard coupling, parity 1": lambda: AffineCoupling(2, 4, checkerboard=True, parity=1),
    "channel coupling, parity 0": lambda: AffineCoupling(3, 4, checkerboard=False, parity=0),
    "channel coupling, parity 1": lambda: AffineCoupling(3, 4, checkerboard=False, parity=1),
    "checkerboard coupling, sigmoid scale": lambda: AffineCoupling(2, 4, checkerboard=True, parity=0, log_scale="sigmoid"),
    "channel coupling, sigmoid scale": lambda: AffineCoupling(3, 4, checkerboard=False, parity=1, log_scale="sigmoid"),
    "channel coupling, bounded shift": lambda: AffineCoupling(3, 4, checkerboard=False, parity=0, max_shift=0.2),
    "squeeze": Squeeze,
    "act-norm": lambda: ActNorm(3),
    "1x1 convolution (LU)": lambda: InvertibleConv1x1(3),
    "logit transform": lambda: LogitTransform(0.05),
    "split, learned prior": lambda: Split(3, learned_prior=True),
    "split, standard normal": lambda: Split(3, learned_prior=False),
}


@pytest.mark.parametrize("layer_name", LAYERS)
def test_layer_log_det_matches_brute_force_jacobian(layer_name):
    torch.manual_seed(0)
    layer = perturb(LAYERS[layer_name]()).double()
    channels = 2 if "checkerboard" in layer_name else 3
    x = torch.rand(1, channels, 4, 4, dtype=torch.float64)  # in (0, 1), which the logit transform needs

    def flat_output(x):
        outputs = layer(x)
        return torch.cat([outputs[0].flatten(1), outputs[1].flatten(1)], 1) if isinstance(layer, Split) else outputs[0]

    log_det = layer(x)[-1]
    assert log_det.shape == (1,)
    assert log_det.item() == pytest.approx(brute_force_log_det(flat_output, x), abs=1e-8)
    # ... and the layer inverts.
    if isinstance(layer, Split):
        kept, eps, _ = layer(x)
        assert torch.allclose(layer.inverse(kept, eps), x, atol=1e-10)
    else:
        assert torch.allclose(layer.inverse(layer(x)[0]), x, atol=1e-10)


def test_a_sigmoid_scaled_coupling_stretches_at_most_1_13x_a_tanh_scaled_one_without_bound():
    x = 100 * torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(0))  # far from any training data
    changed_dims = 2 * 4 * 4  # the half of the channels a channel coupling changes
    bound = changed_dims * -math.log(1 / (1 + math.exp(-2.0)))  # log(1 / sigmoid(2)) per changed dimension
    for log_scale in ("sigmoid", "tanh"):
        coupling = perturb(AffineCoupling(4, 8, checkerboard=False, parity=0, log_scale=log_scale), scale=3.0)
        if log_scale == "tanh":
            coupling.scale.data.fill_(20.0)  # what a long run can learn
        with torch.no_grad():
            log_det = coupling(x)[1]
        assert torch.isfinite(log_det).all()
        assert bool((log_det <= bound).all()) == (log_scale == "sigmoid")


def test_a_bounded_shift_moves_no_dimension_further_than_its_bound():
    x = 100 * torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(0))  # far from any training data
    for max_shift in (2.0, None):
        torch.manual_seed(0)
        coupling = perturb(AffineCoupling(4, 8, checkerboard=False, parity=0, log_scale="sigmoid", max_shift=max_shift),
                           scale=3.0)
        with torch.no_grad():
            y = coupling(x)[0]
            log_s = coupling._log_scale_and_shift(x[:, :2])[0]
        shift = y[:, 2:] - x[:, 2:] * torch.exp(log_s)  # what is left of y_b = x_b exp(s) + t
        assert torch.equal(y[:, :2], x[:, :2])
        assert bool((shift.abs() <= 2.0 + 1e-4).all()) == (max_shift is not None)


def test_optional_numbers_take_none_on_the_command_line():
    (config,) = parse_args([GlowConfig], ["--logit_alpha", "none", "--coupling_max_shift", "3"])
    assert config.logit_alpha is None and config.coupling_max_shift == 3.0
    (config,) = parse_args([GlowConfig], ["--coupling_max_shift", "None"])
    assert config.coupling_max_shift is None and config.logit_alpha == GlowConfig.logit_alpha


@pytest.mark.parametrize("name", VARIANTS)
def test_whole_flow_log_det_matches_brute_force_jacobian(name):
    model_class, config = VARIANTS[name]
    torch.manual_seed(0)
    model = perturb(model_class(type(config)(**{**vars(config), "resolution": 4})), scale=0.1).double()
    y = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    _, log_det = model.encode_with_log_det(y)
    assert log_det.item() == pytest.approx(brute_force_log_det(model.encode, y), abs=1e-7)


@pytest.mark.parametrize("flow_class", [PlanarFlow, RadialFlow])
def test_posterior_flow_log_det_matches_brute_force_jacobian(flow_class):
    torch.manual_seed(0)
    flow, dim = flow_class(), 3
    params = flow_class.unpack(torch.randn(1, flow_class.num_parameters(dim), dtype=torch.float64), dim)
    z = torch.randn(1, dim, dtype=torch.float64)
    _, log_det = flow(z, *params)
    assert log_det.item() == pytest.approx(brute_force_log_det(lambda x: flow(x, *params)[0], z), abs=1e-8)


def test_radial_flow_stays_invertible_for_any_parameters():
    # beta >= -alpha [Rezende & Mohamed, appendix A]: f is monotone along every ray from z0, so log-dets are finite.
    flow = RadialFlow()
    z0, alpha_raw, beta_raw = torch.zeros(1, 2), torch.full((1, 1), 3.0), torch.full((1, 1), -30.0)
    radii = torch.linspace(0, 10, 101)[:, None]
    points = radii * torch.tensor([[1.0, 0.0]])
    images, log_det = flow(points, z0.expand(101, -1), alpha_raw.expand(101, -1), beta_raw.expand(101, -1))
    assert log_det.isfinite().all()
    assert (images[1:, 0] > images[:-1, 0]).all()


# --- likelihood on the 8-bit scale ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["glow", "glow, centred, unbounded shift", "glow, variational"])
def test_log_prob_counts_the_pixel_scale_change_of_variables(name):
    # A fresh Glow is a rotation of its preprocessed input h (couplings and split priors start at the identity,
    # act-norm is the identity, the 1x1 convolutions are orthogonal): log p(x + u) = log N(h) + log|dh/dy| - D log 256,
    # with h = y - 1/2 or h = logit(s), s = alpha + (1 - 2 alpha) y; learned noise subtracts log q(u | x).
    model = make_model(name)
    images = random_images(4, model.config)
    if model.dequantizer is None:
        y, _ = dequantize(images, torch.Generator().manual_seed(3))
        log_q = 0.0
    else:
        perturb(model.dequantizer)  # noise that depends on the image
        with torch.no_grad():
            noise, log_q = model.dequantizer(images, torch.Generator().manual_seed(3))
        y = (images.float() + noise) / 256
    log_prob = model.log_prob(images, generator=torch.Generator().manual_seed(3))
    num_dims = y[0].numel()
    alpha = model.config.logit_alpha
    if alpha is None:
        h, log_dh_dy = y - 0.5, 0.0
    else:
        s = alpha + (1 - 2 * alpha) * y
        h, log_dh_dy = torch.log(s / (1 - s)), torch.log((1 - 2 * alpha) / (s * (1 - s))).flatten(1).sum(1)
    expected = (-0.5 * (h**2).flatten(1).sum(1) + log_dh_dy
                - num_dims * (0.5 * math.log(2 * math.pi) + math.log(256)) - log_q)
    assert torch.allclose(log_prob, expected, atol=1e-3)
    outputs = model({"images": images})
    assert outputs["bits_per_dim"].item() == pytest.approx(outputs["loss"].item() / math.log(2), rel=1e-6)


def test_variational_noise_has_the_logit_normal_density_of_its_network():
    torch.manual_seed(0)
    dequantizer = perturb(VariationalDequantizer(num_channels=3, hidden_channels=8), scale=0.1)
    images = random_images(5, GlowConfig(resolution=8, num_channels=3))
    with torch.no_grad():
        noise, log_q = dequantizer(images, torch.Generator().manual_seed(1))
        mean, log_scale = dequantizer.net(images.float() / 127.5 - 1).double().chunk(2, dim=1)
    assert noise.shape == images.shape and ((noise > 0) & (noise < 1)).all()
    assert noise.std(0).mean() > 0.05  # each image draws its own noise
    u = noise.double()
    h = torch.log(u) - torch.log1p(-u)  # u = sigmoid(h), h ~ N(mean, scale^2)
    expected = torch.distributions.Normal(mean, log_scale.exp()).log_prob(h) - torch.log(u * (1 - u))
    torch.testing.assert_close(log_q.double(), expected.flatten(1).sum(1), rtol=1e-4, atol=1e-2)
    again, _ = dequantizer(images, torch.Generator().manual_seed(1))
    assert torch.equal(again, noise)


def test_learning_the_noise_alone_tightens_the_bound():
    model = make_model("glow, variational")
    images = random_images(8, model.config)
    model.initialize_from_data({"images": images})
    perturb(model.flow, scale=0.05)

    def bound() -> float:  # the mean over 20 fixed draws of the noise
        with torch.no_grad():
            return torch.stack([model.log_prob(images, torch.Generator().manual_seed(seed)) for seed in range(20)]).mean().item()

    before = bound()
    optimizer = torch.optim.Adam(model.dequantizer.parameters(), lr=1e-2)
    for step in range(40):
        loss = -model.log_prob(images, torch.Generator().manual_seed(100 + step)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert bound() > before + 1.0  # nats per 64-pixel image (11 when written)


# --- act-norm's data-dependent initialization -------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_act_norm_after_initialize_from_data_is_normalized(name):
    model = make_model(name)
    norms = [module for module in model.modules() if isinstance(module, ActNorm)]
    outputs = []
    hooks = [norm.register_forward_hook(lambda module, inputs, output: outputs.append(output[0])) for norm in norms]
    model.initialize_from_data({"images": random_images(32, model.config)})
    for hook in hooks:
        hook.remove()
    assert len(outputs) == len(norms) > 0
    for output in outputs:
        assert output.mean((0, 2, 3)).abs().max().item() < 1e-4
        assert (output.var((0, 2, 3), unbiased=False) - 1).abs().max().item() < 1e-3
    assert not any(norm.initializing for norm in norms)  # a later forward never initializes again


@pytest.mark.parametrize("name", [*MODELS, *VARIATIONAL])
def test_save_and_load_keeps_weights_and_samples(name, tmp_path):
    model = make_model(name)
    model.initialize_from_data({"images": random_images(16, model.config)})
    perturb(model, scale=0.05).eval()
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    before = {key: value.clone() for key, value in loaded.state_dict().items()}
    for key, value in model.state_dict().items():
        assert torch.equal(before[key], value), key
    loaded({"images": random_images(8, model.config, seed=1)})  # a forward must not re-initialize act-norm
    loaded.log_prob(random_images(8, model.config, seed=2))
    for key, value in loaded.state_dict().items():
        assert torch.equal(before[key], value), key
    images = random_images(4, model.config, seed=3)
    with torch.no_grad():  # the same density, and for learned noise the same q(u | x)
        expected = model.log_prob(images, generator=torch.Generator().manual_seed(7))
        assert torch.equal(loaded.log_prob(images, generator=torch.Generator().manual_seed(7)), expected)
    samples = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert samples.dtype == torch.uint8 and samples.shape == (6, 1, 8, 8)
    assert torch.equal(samples, loaded.sample(6, generator=torch.Generator().manual_seed(0)))
    cooler = loaded.sample(6, generator=torch.Generator().manual_seed(0), temperature=0.5)
    assert cooler.shape == samples.shape


@pytest.mark.parametrize("name", MODELS)
def test_interpolation_ends_at_the_images(name):
    model = make_model(name)
    perturb(model, scale=0.05).eval()
    images = random_images(2, model.config)
    line = model.interpolate(images[0], images[1], steps=5)
    assert line.shape == (5, 1, 8, 8) and line.dtype == torch.uint8
    assert torch.equal(line[[0, -1]], images)


@pytest.mark.parametrize("config_class, field, value", [
    (RealNVPConfig, "resolution", 27), (RealNVPConfig, "num_couplings", 0), (RealNVPConfig, "logit_alpha", 0.5),
    (GlowConfig, "resolution", 30), (GlowConfig, "num_steps", 0), (GlowConfig, "num_channels", 2),
    (GlowConfig, "coupling_log_scale", "exp"), (GlowConfig, "logit_alpha", 0.5), (GlowConfig, "coupling_max_shift", 0.0),
    (GlowConfig, "dequantization", "gaussian"), (RealNVPConfig, "dequantizer_channels", 0),
    (VAEConfig, "flow_type", "sylvester"),
])
def test_bad_config_is_refused_with_the_field_name(config_class, field, value):
    with pytest.raises(ConfigError, match=field):
        config_class(**{field: value})


def test_vae_with_radial_flows_trains_a_step():
    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden_channels=8, latent_dim=4, num_mixtures=2, num_flows=2, flow_type="radial"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    outputs = model({"images": random_images(8, model.config)})
    assert outputs["loss"].isfinite()
    outputs["loss"].backward()
    optimizer.step()
    assert model({"images": random_images(8, model.config)})["loss"].isfinite()


# --- the training scripts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, num_processes, dequantization", [("realnvp", 1, "uniform"), ("glow", 2, "uniform"),
                                                                 ("realnvp", 1, "variational")])
def test_training_script_initializes_from_data_trains_and_the_folder_samples(name, num_processes, dequantization, tmp_path):
    # The loop calls initialize_from_data once, on every process, with the same batch; a learning rate of
    # ~0 leaves act-norm where that initialization put them, and the replicas must agree.
    flags = [*SCRIPT_FLAGS[name], *COMMON_FLAGS, "--learning_rate", "1e-12", "--output_dir", str(tmp_path),
             "--dequantization", dequantization]
    run_script(f"train_{name}.py", flags, num_processes=num_processes)
    checksums = json.loads((tmp_path / "logs" / "run.json").read_text())["replica_checksums"]
    assert len(checksums) == num_processes and len(set(checksums)) == 1
    model = MODELS[name][0].from_pretrained(tmp_path)
    assert (model.dequantizer is not None) == (dequantization == "variational")
    log_scales = torch.cat([m.log_scale.flatten() for m in model.modules() if isinstance(m, ActNorm)])
    assert log_scales.abs().max().item() > 0.1, "act-norm was not initialized from data"
    samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 28, 28) and samples.dtype == torch.uint8
