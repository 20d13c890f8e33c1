"""Train a variational autoencoder on 8-bit images (the embedded MNIST sample unless told otherwise).

    accelerate launch training/train_vae.py --max_train_steps 2000 --output_dir vae-mnist
    accelerate launch training/train_vae.py --num_flows 4 --eval_data_dir ../shared/data/mnist
"""

from gm_hub.data import ImageDataConfig, load_image_datasets
from gm_hub.metrics import EvaluationConfig, image_evaluation
from gm_hub.models.vae import VAE, VAEConfig
from gm_hub.training import TrainingConfig, parse_args, run_main, set_seed, train


def main(argv: list[str] | None = None) -> None:
    training, data, evaluation, model_config = parse_args(
        [TrainingConfig, ImageDataConfig, EvaluationConfig, VAEConfig], argv, description=__doc__
    )
    train_set, validation_set = load_image_datasets(data)
    eval_fn, card = image_evaluation(data, validation_set, evaluation)
    set_seed(training.seed)  # before building the model: the initial weights belong to the run
    train(VAE(model_config), train_set, training, eval_fn=eval_fn, model_card_kwargs=card)


if __name__ == "__main__":
    run_main(main)
