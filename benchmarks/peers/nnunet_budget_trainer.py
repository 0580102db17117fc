"""nnU-Net's default trainer under a wall-time budget (installed into nnU-Net's environment by
`benchmarks/peers/nnunet.py setup`; nnU-Net finds trainers inside its own package).

Everything is nnUNetTrainer's (plan, augmentation, SGD + poly learning rate, Dice + CE with deep supervision, 250
iterations and 50 validation iterations an epoch, best checkpoint on the EMA pseudo Dice of fold 0's val cases),
except the number of epochs: after the first epoch the trainer measures it and trains as many epochs as fit in
LEAFSEG_NNUNET_BUDGET_MIN minutes of epochs (at least one, at most nnU-Net's 1000), with the poly schedule stretched
to that count, as `leafseg train` does with `train.time_budget_min`. A run continued with nnU-Net's `--c` trains to
nnU-Net's 1000 epochs: budgeted runs are meant to run once, uninterrupted.

On a CPU one of nnU-Net's 250-iteration epochs can take longer than the whole budget, so
LEAFSEG_NNUNET_ITERATIONS (default 250) shortens the epoch (validation iterations shrink in proportion, at least 1):
an epoch is only nnU-Net's unit of logging, checkpoint choice and learning-rate steps, its batches are drawn at
random either way. The closing validation of fold 0's val cases is skipped (see perform_actual_validation).
"""

import os
from time import time

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerBudget(nnUNetTrainer):
    # nnU-Net 2.8.1's signature, exactly: it records its init arguments by inspecting it (checkpoints restore them)
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_s = float(os.environ.get("LEAFSEG_NNUNET_BUDGET_MIN", "57")) * 60
        iterations = int(os.environ.get("LEAFSEG_NNUNET_ITERATIONS", self.num_iterations_per_epoch))
        self.num_val_iterations_per_epoch = max(1, self.num_val_iterations_per_epoch * iterations
                                                // self.num_iterations_per_epoch)
        self.num_iterations_per_epoch = iterations
        self._epochs_started_at = None

    def on_epoch_end(self):
        super().on_epoch_end()  # current_epoch now counts the finished epochs
        if self.current_epoch == 1:
            per_epoch = time() - self._epochs_started_at
            fit = max(1, min(self.num_epochs, int(self.budget_s // per_epoch)))
            self.print_to_log_file(f"budget: first epoch {per_epoch:.0f} s; {fit} epoch(s) fit in "
                                   f"{self.budget_s / 60:g} min (poly schedule over {fit})", also_print_to_console=True)
            self.num_epochs = fit
            self.lr_scheduler.max_steps = fit

    def perform_actual_validation(self, save_probabilities: bool = False):
        # nnU-Net's closing sliding-window validation of fold 0's val cases takes longer than a CPU budget's training;
        # the test split is predicted and scored by `leafseg score` instead, and the checkpoint is chosen on nnU-Net's
        # per-epoch pseudo Dice of the same val cases, as always
        self.print_to_log_file("final validation skipped (nnUNetTrainerBudget): the test split is scored apart",
                               also_print_to_console=True)

    def run_training(self):
        # nnUNetTrainer.run_training with the epoch count read on every pass (it may shrink after the first epoch)
        self.on_train_start()
        self._epochs_started_at = time()
        while self.current_epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = [self.train_step(next(self.dataloader_train))
                             for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
        self.on_train_end()
