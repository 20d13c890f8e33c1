"""Train a conditional Gated PixelCNN on 8-bit images (the embedded MNIST sample unless told otherwise).

    accelerate launch training/train_pixelcnn.py --output_dir pixelcnn-mnist --eval_data_dir ../shared/data/mnist
    accelerate launch training/train_pixelcnn.py --num_classes 0 --train_data_dir my-images  # unconditional
"""

from gm_hub.data import ImageDataConfig, load_image_datasets
from gm_hub.metrics import EvaluationConfig, image_evaluation
from gm_hub.models.pixelcnn import PixelCNN, PixelCNNConfig
from gm_hub.registry import get_family
from gm_hub.training import TrainingConfig, parse_args, run_main, set_seed, train


def main(argv: list[str] | None = None) -> None:
    training, data, evaluation, model_config = parse_args(
        [TrainingConfig, ImageDataConfig, EvaluationConfig, PixelCNNConfig], argv, description=__doc__,
        defaults=get_family("pixelcnn").training_defaults,
    )
    train_set, validation_set = load_image_datasets(data)
    eval_fn, card = image_evaluation(data, validation_set, evaluation)
    set_seed(training.seed)  # before building the model: the initial weights belong to the run
    train(PixelCNN(model_config), train_set, training, eval_fn=eval_fn, model_card_kwargs=card)


if __name__ == "__main__":
    run_main(main)
