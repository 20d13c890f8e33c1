"""Train a DDPM (a diffusers UNet2DModel with a DDPMScheduler) on 8-bit images (the embedded MNIST sample
unless told otherwise); the output folder is a stock diffusers DDPMPipeline.

    accelerate launch training/train_ddpm.py --max_train_steps 5000 --output_dir ddpm-mnist
    accelerate launch training/train_ddpm.py --beta_schedule squaredcos_cap_v2 --prediction_type v_prediction
    accelerate launch training/train_ddpm.py --block_out_channels 64 128 128 --layers_per_block 2 --eval_data_dir ../shared/data/mnist

Family defaults (learning rate, an EMA of the weights for sampling, the run length) come from the "ddpm" record
of `gm_hub.registry`; every flag still overrides them. Sample grids and the evaluation's samples use the model's
default sampler, DPM-Solver++ in 20 steps.
"""

from gm_hub.data import ImageDataConfig, load_image_datasets
from gm_hub.metrics import EvaluationConfig, image_evaluation
from gm_hub.models.ddpm import DDPM, DDPMConfig
from gm_hub.registry import get_family
from gm_hub.training import TrainingConfig, parse_args, run_main, set_seed, train


def main(argv: list[str] | None = None) -> None:
    training, data, evaluation, model_config = parse_args(
        [TrainingConfig, ImageDataConfig, EvaluationConfig, DDPMConfig], argv, description=__doc__,
        defaults=get_family("ddpm").training_defaults,
    )
    train_set, validation_set = load_image_datasets(data)
    eval_fn, card = image_evaluation(data, validation_set, evaluation)
    set_seed(training.seed)  # before building the model: the initial weights belong to the run
    train(DDPM(model_config), train_set, training, eval_fn=eval_fn, model_card_kwargs=card)


if __name__ == "__main__":
    run_main(main)
