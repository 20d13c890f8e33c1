"""Train the digit classifier that scores generated MNIST digits (classifier FID, confident share).

    accelerate launch training/train_classifier.py --eval_data_dir ../shared/data/mnist
    cp mnist-classifier/model.safetensors mnist-classifier/config.json gm_hub/weights/mnist-classifier/

It trains on the training split of the embedded 5,000 MNIST digits with random affine augmentation and
reports its accuracy on the MNIST test set (or on the validation split without --eval_data_dir).
"""

from gm_hub.data import ImageDataConfig, load_image_datasets
from gm_hub.metrics import EvaluationConfig, image_evaluation
from gm_hub.models.classifier import DigitClassifier, DigitClassifierConfig
from gm_hub.registry import get_family
from gm_hub.training import TrainingConfig, parse_args, run_main, set_seed, train


def main(argv: list[str] | None = None) -> None:
    training, data, evaluation, model_config = parse_args(
        [TrainingConfig, ImageDataConfig, EvaluationConfig, DigitClassifierConfig], argv, description=__doc__,
        defaults=get_family("classifier").training_defaults,
    )
    train_set, validation_set = load_image_datasets(data)
    eval_fn, card = image_evaluation(data, validation_set, evaluation)
    set_seed(training.seed)  # before building the model: the initial weights belong to the run
    train(DigitClassifier(model_config), train_set, training, eval_fn=eval_fn, model_card_kwargs=card)


if __name__ == "__main__":
    run_main(main)
