#!/usr/bin/env bash
# Re-create every shipped folder under pretrained/ with the exact command in its model card, then copy the
# published files (weights, config, card, sample grid) into pretrained/NAME.
#
#     bash training/train_all.sh                 # every model
#     bash training/train_all.sh vae-mnist gan-mnist
#
# Needs ../shared/data/mnist (the MNIST test set, for the card's metrics) and ../shared/data/tinyshakespeare.
# Where each ran (its card's training_time): ddpm-mnist (31 min), vae-mnist (6 min, then its prior refit and
# evaluation), gan-mnist (15 min), glow-mnist (57 min) and pixelcnn-mnist (93 min, then 101 fine-tuning) on this project's 2-core CPU;
# the others on one H100, several side by side (2.5 to 7.3 minutes each). On a 2-core CPU those take hours.
set -euo pipefail
cd "$(dirname "$0")/.."
EVAL="--eval_data_dir ../shared/data/mnist --checkpointing_steps 1000 --checkpoints_total_limit 1"

declare -A COMMANDS=(
  [vae-mnist]="training/train_vae.py --eval_data_dir ../shared/data/mnist --logging_steps 25 --hidden_channels 32 --latent_dim 32 --prior mixture --prior_components 400 --num_flows 4 --flow_type radial --max_train_steps 6000 --max_train_minutes 30 --learning_rate 2e-3 --use_ema --save_images_steps 2000 --checkpointing_steps 1000 --checkpoints_total_limit 1 --prior_fit_iterations 100 --output_dir runs/vae-mix400-fit"
  [gan-mnist]="training/train_gan.py --eval_data_dir ../shared/data/mnist --checkpointing_steps 3000 --logging_steps 100 --adversarial_loss hinge --spectral_norm --hidden_channels 64 --discriminator_channels 64 --num_classes 10 --mode_seeking_weight 0.5 --mixed_precision bf16 --max_train_steps 12000 --max_train_minutes 25 --save_images_steps 3000 --output_dir runs/gan-cond-ms05"
  [realnvp-mnist]="training/train_realnvp.py $EVAL --logging_steps 25 --num_scales 3 --num_couplings 4 --hidden_channels 192 --max_train_steps 5000 --max_train_minutes 7.3 --use_ema --save_images_steps 1000 --output_dir runs/realnvp-mnist"
  [glow-mnist]="training/train_glow.py $EVAL --logging_steps 25 --num_steps 16 --hidden_channels 192 --max_train_steps 8000 --max_train_minutes 100 --use_ema --save_images_steps 1000 --dequantization variational --output_dir runs/glow-mnist-vardeq"
  [pixelcnn-mnist]="training/train_pixelcnn.py --eval_data_dir ../shared/data/mnist --hidden_channels 64 --num_layers 15 --kernel_size 3 --mixed_precision bf16 --max_train_steps 4000 --max_train_minutes 96 --checkpointing_steps 500 --checkpoints_total_limit 1 --logging_steps 25 --save_images_steps 1000 --output_dir runs/pixelcnn-softmax"
  [ddpm-mnist]="training/train_ddpm.py --output_dir runs/ddpm-mnist --max_train_steps 4500 --checkpointing_steps 500 --save_images_steps 500 --eval_data_dir ../shared/data/mnist"
  [gpt-shakespeare]="training/train_gpt.py --train_file ../shared/data/tinyshakespeare/input.txt --checkpointing_steps 1000 --checkpoints_total_limit 1 --logging_steps 50 --n_layer 4 --n_head 4 --n_embd 256 --block_size 256 --dropout 0.1 --mixed_precision bf16 --max_train_steps 5000 --learning_rate 1e-3 --lr_warmup_steps 100 --adam_beta2 0.99 --adam_weight_decay 0.1 --save_images_steps 1000 --output_dir runs/gpt-shakespeare"
)
# A second command that starts from the first one's weights (--init_from), for models trained in two runs.
declare -A FINE_TUNING=(
  [pixelcnn-mnist]="training/train_pixelcnn.py --eval_data_dir ../shared/data/mnist --hidden_channels 64 --num_layers 15 --kernel_size 3 --mixed_precision bf16 --init_from runs/pixelcnn-softmax --learning_rate 4e-4 --lr_warmup_steps 100 --max_train_steps 2500 --max_train_minutes 100 --checkpointing_steps 500 --checkpoints_total_limit 1 --logging_steps 25 --save_images_steps 1000 --output_dir runs/pixelcnn-finetune"
)
PUBLISHED="README.md config.json model.safetensors samples.png generation_config.json tokenizer.json tokenizer_config.json model_index.json"

for name in "${@:-${!COMMANDS[@]}}"; do
  command=${COMMANDS[$name]:?"unknown model $name; known: ${!COMMANDS[*]}"}
  echo "== $name: accelerate launch $command"
  accelerate launch --num_cpu_threads_per_process "$(nproc)" $command --overwrite_output_dir  # every core on a CPU
  if [ -n "${FINE_TUNING[$name]:-}" ]; then
    command=${FINE_TUNING[$name]}
    echo "== $name, fine-tuned: accelerate launch $command"
    accelerate launch --num_cpu_threads_per_process "$(nproc)" $command --overwrite_output_dir
  fi
  run_dir=${command##*--output_dir }
  rm -rf "pretrained/$name" && mkdir -p "pretrained/$name"
  for file in $PUBLISHED; do [ -f "$run_dir/$file" ] && cp "$run_dir/$file" "pretrained/$name/"; done
  for folder in unet scheduler; do [ -d "$run_dir/$folder" ] && cp -r "$run_dir/$folder" "pretrained/$name/"; done
done
