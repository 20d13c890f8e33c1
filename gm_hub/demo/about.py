"""The About tab: each family in a few lines, its key equation and its paper."""

import gradio as gr

ABOUT = r"""
### VAE: Kingma & Welling, *Auto-Encoding Variational Bayes* (2014)
An encoder $q(z \mid x)$ and a decoder $p(x \mid z)$ trained on the evidence lower bound; a flow posterior
(Rezende & Mohamed, *Variational Inference with Normalizing Flows*, 2015) makes $q$ richer.
$$\log p(x) \ge \mathbb{E}_{q(z \mid x)}\left[\log p(x \mid z)\right] - \mathrm{KL}\left(q(z \mid x)\,\|\,p(z)\right)$$

### GAN: Goodfellow et al., *Generative Adversarial Nets* (2014); DCGAN, Radford et al. (2016)
A generator $G$ and a discriminator $D$ play a minimax game; no likelihood, sharp samples.
$$\min_G \max_D \; \mathbb{E}_{x}\left[\log D(x)\right] + \mathbb{E}_{z}\left[\log\left(1 - D(G(z))\right)\right]$$

### Flows: RealNVP, Dinh et al. (2016); Glow, Kingma & Dhariwal (2018)
An invertible network $f$ maps data to a Gaussian; the change of variables gives the exact likelihood.
$$\log p(x) = \log \pi\left(f^{-1}(x)\right) + \log \left|\det \frac{\partial f^{-1}(x)}{\partial x}\right|$$

### Diffusion: Ho, Jain & Abbeel, *Denoising Diffusion Probabilistic Models* (2020)
Noise is added over $T$ steps; a network learns to predict it, and samplers (DDIM, DPM-Solver, ...) run the
reverse process in a few steps.
$$\mathcal{L} = \mathbb{E}_{t, x_0, \epsilon}\left\|\epsilon - \epsilon_\theta\left(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon,\; t\right)\right\|^2$$

### Autoregressive: PixelCNN, van den Oord et al. (2016); GPT, Radford et al. (2018, 2019)
One element at a time, each conditioned on all before it: pixels in raster order, or tokens of text.
$$p(x) = \prod_{i} p\left(x_i \mid x_{<i}\right)$$
"""


def build_tab() -> None:
    gr.Markdown(ABOUT, latex_delimiters=[{"left": "$$", "right": "$$", "display": True},
                                         {"left": "$", "right": "$", "display": False}])
