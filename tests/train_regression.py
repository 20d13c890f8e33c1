"""A deterministic model for the loop's distributed tests: an MLP fitted to a fixed random function.

    accelerate launch tests/train_regression.py --output_dir OUT --max_train_steps 8
"""

import torch

from gm_hub.training import TrainingConfig, parse_args, run_main, set_seed, train


class Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def forward(self, batch):
        return {"loss": ((self.net(batch["x"]) - batch["y"]) ** 2).mean()}

    def sample(self, num_samples, generator=None):
        return ["no samples"]

    def save_pretrained(self, folder, model_card_kwargs=None):
        from safetensors.torch import save_model

        save_model(self, str(folder / "model.safetensors"))


class Points(torch.utils.data.Dataset):
    def __init__(self, n=256):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=generator)
        self.y = torch.sin(self.x.sum(1, keepdim=True))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def main():
    (config,) = parse_args([TrainingConfig])
    set_seed(config.seed)
    train(Regression(), Points(), config)


if __name__ == "__main__":
    run_main(main)
