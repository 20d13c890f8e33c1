"""Train Glow on 8-bit images (the embedded MNIST sample unless told otherwise).

    accelerate launch training/train_glow.py --max_train_steps 20000 --output_dir glow-mnist
    accelerate launch training/train_glow.py --num_steps 16 --hidden_channels 128 --eval_data_dir ../shared/data/mnist

Family defaults (learning rate, schedule, clipping) come from the "glow" record of `gm_hub.registry`; every
flag still overrides them. Act-norm is initialized from the first batch by the loop (`initialize_from_data`).
"""

from gm_hub.data import ImageDataConfig, load_image_datasets
from gm_hub.metrics import EvaluationConfig, image_evaluation
from gm_hub.models.glow import Glow, GlowConfig
from gm_hub.registry import get_family
from gm_hub.training import TrainingConfig, parse_args, run_main, set_seed, train


def main(argv: list[str] | None = None) -> None:
    training, data, evaluation, model_config = parse_args(
        [TrainingConfig, ImageDataConfig, EvaluationConfig, GlowConfig], argv, description=__doc__,
        defaults=get_family("glow").training_defaults,
    )
    train_set, validation_set = load_image_datasets(data)
    eval_fn, card = image_evaluation(data, validation_set, evaluation)
    set_seed(training.seed)  # before building the model: the initial weights belong to the run
    train(Glow(model_config), train_set, training, eval_fn=eval_fn, model_card_kwargs=card)


if __name__ == "__main__":
    run_main(main)
