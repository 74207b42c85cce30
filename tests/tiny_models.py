"""Small torch models the real-model tests share (seeded, so both sides build the same one)."""
import torch


def mlp():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 4)).eval()


def encoder():
    torch.manual_seed(2)
    return torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2).eval()


def local(module, *xs):
    with torch.no_grad():
        return module(*xs)
