"""Train a DCGAN-style GAN on 8-bit images (the embedded MNIST sample unless told otherwise); publishes the generator.

    accelerate launch training/train_gan.py --max_train_steps 3000 --output_dir gan-mnist
    accelerate launch training/train_gan.py --adversarial_loss hinge --spectral_norm --discriminator_steps 2
    accelerate launch training/train_gan.py --num_classes 10 --adversarial_loss hinge --spectral_norm  # class-conditional
    accelerate launch training/train_gan.py --resolution 32 --eval_data_dir ../shared/data/mnist

Family defaults (Adam lr 2e-4, beta1 0.5, a constant schedule, EMA of G for sampling) come from the
family's record in `gm_hub/registry.py`; every flag still overrides them.
"""

from gm_hub.data import ImageDataConfig, load_image_datasets
from gm_hub.metrics import EvaluationConfig, image_evaluation
from gm_hub.models.gan import DISCRIMINATOR, GAN, GENERATOR, AdversarialConfig, DiscriminatorConfig, GeneratorConfig
from gm_hub.registry import get_family
from gm_hub.training import Player, TrainingConfig, parse_args, run_main, set_seed, train


def main(argv: list[str] | None = None) -> None:
    training, data, evaluation, generator_config, discriminator_config, adversarial = parse_args(
        [TrainingConfig, ImageDataConfig, EvaluationConfig, GeneratorConfig, DiscriminatorConfig, AdversarialConfig],
        argv, description=__doc__, defaults=get_family("gan").training_defaults,
    )
    train_set, validation_set = load_image_datasets(data)
    eval_fn, card = image_evaluation(data, validation_set, evaluation)
    set_seed(training.seed)  # before building the model: the initial weights belong to the run
    gan = GAN(generator_config, discriminator_config, adversarial)
    players = [
        Player(DISCRIMINATOR, list(gan.discriminator.parameters()), steps=adversarial.discriminator_steps),
        Player(GENERATOR, list(gan.generator.parameters())),
    ]
    train(
        gan,
        train_set,
        training,
        players=players,
        eval_fn=eval_fn,
        model_card_kwargs=card,
    )


if __name__ == "__main__":
    run_main(main)
