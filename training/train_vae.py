"""Train a variational autoencoder on 8-bit images (the embedded MNIST sample unless told otherwise).

    accelerate launch training/train_vae.py --max_train_steps 2000 --output_dir vae-mnist
    accelerate launch training/train_vae.py --num_flows 4 --eval_data_dir ../shared/data/mnist
    accelerate launch training/train_vae.py --prior mixture --prior_components 400 --prior_fit_iterations 100
"""

from functools import partial

import torch

from gm_hub.data import ImageDataConfig, load_image_datasets
from gm_hub.errors import UserError
from gm_hub.metrics import EvaluationConfig, image_evaluation
from gm_hub.models.vae import VAE, PriorFitConfig, VAEConfig
from gm_hub.training import TrainingConfig, parse_args, run_main, set_seed, train


def fit_prior(model: VAE, images: torch.Tensor, prior_fit: PriorFitConfig, seed: int) -> None:
    """The loop's finalize_fn: the same latents, hence the same prior, on every process."""
    model.fit_prior(images, prior_fit.prior_fit_iterations, prior_fit.prior_fit_samples_per_image,
                    generator=torch.Generator().manual_seed(seed))


def main(argv: list[str] | None = None) -> None:
    training, data, evaluation, model_config, prior_fit = parse_args(
        [TrainingConfig, ImageDataConfig, EvaluationConfig, VAEConfig, PriorFitConfig], argv, description=__doc__
    )
    if prior_fit.prior_fit_iterations and model_config.prior != "mixture":
        raise UserError("--prior_fit_iterations refits a mixture prior: add --prior mixture")
    train_set, validation_set = load_image_datasets(data)
    eval_fn, card = image_evaluation(data, validation_set, evaluation)
    finalize_fn = partial(fit_prior, images=train_set.images, prior_fit=prior_fit, seed=training.seed or 0) \
        if prior_fit.prior_fit_iterations else None
    set_seed(training.seed)  # before building the model: the initial weights belong to the run
    train(VAE(model_config), train_set, training, eval_fn=eval_fn, finalize_fn=finalize_fn, model_card_kwargs=card)


if __name__ == "__main__":
    run_main(main)
