"""Train the digit classifier that scores generated MNIST digits (classifier FID, confident share).

    accelerate launch training/train_classifier.py --eval_data_dir ../shared/data/mnist
    cp mnist-classifier/model.safetensors mnist-classifier/config.json gm_hub/weights/mnist-classifier/

It trains on the training split of the embedded 5,000 MNIST digits with random affine augmentation and
reports its accuracy on the MNIST test set (or on the validation split without --eval_data_dir).
"""

from functools import partial

from gm_hub.data import ImageDataConfig, dataset_tags, evaluation_dataset, load_image_datasets
from gm_hub.metrics import EvaluationConfig, evaluate_model
from gm_hub.models.classifier import TRAINING_DEFAULTS, DigitClassifier, DigitClassifierConfig
from gm_hub.training import TrainingConfig, parse_args, run_main, set_seed, train


def main(argv: list[str] | None = None) -> None:
    training, data, evaluation, model_config = parse_args(
        [TrainingConfig, ImageDataConfig, EvaluationConfig, DigitClassifierConfig], argv, description=__doc__,
        defaults=TRAINING_DEFAULTS,
    )
    train_set, validation_set = load_image_datasets(data)
    eval_set, eval_name = evaluation_dataset(data, validation_set)
    set_seed(training.seed)  # before building the model: the initial weights belong to the run
    train(
        DigitClassifier(model_config),
        train_set,
        training,
        eval_fn=partial(evaluate_model, dataset=eval_set, evaluation=evaluation),
        model_card_kwargs={"metrics_dataset": eval_name, "datasets": dataset_tags(data)},
    )


if __name__ == "__main__":
    run_main(main)
