"""The seed documents' code, verbatim, as test oracles (shared by every test that needs it).

Seed 000 (d2l.ai chapter 8): ``RNNModel`` and ``predict_ch8``; seed 001: ``SentimentRNN``;
seed 002: the sine-wave forecaster ``Net`` (its test loop is ``seed_forecast`` below, written
as the issue states the semantics: zero state, run over the series, feed predictions back).
``SeedVocab`` is the part of d2l's ``Vocab`` that ``predict_ch8`` uses (unknown tokens map to
index 0, ``<unk>``).
"""

# ruff: noqa: E731, E501, UP008  (the seed code below is kept verbatim)

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------- seed 000, verbatim
class RNNModel(nn.Module):
    """循环神经网络模型"""
    def __init__(self, rnn_layer, vocab_size, **kwargs):
        super(RNNModel, self).__init__(**kwargs)  # noqa: UP008 - verbatim
        self.rnn = rnn_layer
        self.vocab_size = vocab_size
        self.num_hiddens = self.rnn.hidden_size
        # 如果RNN是双向的(之后将介绍),num_directions应该是2,否则应该是1
        if not self.rnn.bidirectional:
            self.num_directions = 1
            self.linear = nn.Linear(self.num_hiddens, self.vocab_size)
        else:
            self.num_directions = 2
            self.linear = nn.Linear(self.num_hiddens * 2, self.vocab_size)

    def forward(self, inputs, state):
        X = F.one_hot(inputs.T.long(), self.vocab_size)
        X = X.to(torch.float32)
        Y, state = self.rnn(X, state)
        # 全连接层首先将Y的形状改为(时间步数*批量大小,隐藏单元数)
        # 它的输出形状是(时间步数*批量大小,词表大小)。
        output = self.linear(Y.reshape((-1, Y.shape[-1])))
        return output, state

    def begin_state(self, device, batch_size=1):
        if not isinstance(self.rnn, nn.LSTM):
            # nn.GRU以张量作为隐状态
            return  torch.zeros((self.num_directions * self.rnn.num_layers,
                                 batch_size, self.num_hiddens),
                                device=device)
        else:
            # nn.LSTM以元组作为隐状态
            return (torch.zeros((
                self.num_directions * self.rnn.num_layers,
                batch_size, self.num_hiddens), device=device),
                    torch.zeros((
                        self.num_directions * self.rnn.num_layers,
                        batch_size, self.num_hiddens), device=device))


def predict_ch8(prefix, num_preds, net, vocab, device):  #@save
    """在prefix后面生成新字符"""
    state = net.begin_state(batch_size=1, device=device)
    outputs = [vocab[prefix[0]]]
    get_input = lambda: torch.tensor([outputs[-1]], device=device).reshape((1, 1))  # noqa: E731
    for y in prefix[1:]:  # 预热期
        _, state = net(get_input(), state)
        outputs.append(vocab[y])
    for _ in range(num_preds):  # 预测num_preds步
        y, state = net(get_input(), state)
        outputs.append(int(y.argmax(dim=1).reshape(1)))
    return ''.join([vocab.idx_to_token[i] for i in outputs])
# ------------------------------------------------------------------------------ end of seed


# ----------------------------------------------------------------------- seed 001, verbatim
class SentimentRNN(nn.Module):
    def __init__(self, no_layers, vocab_size, hidden_dim, embedding_dim,
                 output_dim, drop_prob=0.5, bidirectional=False):
        super(SentimentRNN, self).__init__()

        self.hidden_dim = hidden_dim
        self.no_layers = no_layers
        self.bidirectional = bidirectional

        # embedding layer
        self.embedding = nn.Embedding(vocab_size, embedding_dim)

        # LSTM
        self.lstm = nn.LSTM(
            input_size=embedding_dim,
            hidden_size=hidden_dim,
            num_layers=no_layers,
            batch_first=True,
            dropout=drop_prob if no_layers > 1 else 0,
            bidirectional=bidirectional
        )

        # 计算 LSTM 输出维度
        lstm_output_dim = hidden_dim * 2 if bidirectional else hidden_dim

        # 注意力机制(可选)
        self.attention = nn.Sequential(
            nn.Linear(lstm_output_dim, lstm_output_dim),
            nn.Tanh(),
            nn.Linear(lstm_output_dim, 1)
        )

        # dropout
        self.dropout = nn.Dropout(drop_prob)

        # 全连接层
        self.fc = nn.Linear(lstm_output_dim, output_dim)
        self.sig = nn.Sigmoid()

    def forward(self, x, hidden=None):
        batch_size = x.size(0)

        if hidden is None:
            hidden = self.init_hidden(batch_size)

        # embeddings
        embeds = self.dropout(self.embedding(x))

        # LSTM
        lstm_out, hidden = self.lstm(embeds, hidden)

        attention_weights = self.attention(lstm_out)  # (batch_size, seq_len, 1)
        attention_weights = torch.softmax(attention_weights, dim=1)
        context = torch.sum(attention_weights * lstm_out, dim=1)  # (batch_size, hidden_dim)

        # 分类
        out = self.dropout(context)
        out = self.fc(out)
        sig_out = self.sig(out)

        return sig_out, hidden

    def init_hidden(self, batch_size):
        device = next(self.parameters()).device
        num_directions = 2 if self.bidirectional else 1

        h0 = torch.zeros(self.no_layers * num_directions, batch_size, self.hidden_dim).to(device)
        c0 = torch.zeros(self.no_layers * num_directions, batch_size, self.hidden_dim).to(device)

        return h0, c0


# ------------------------------------------------------------------------------ end of seed


# ----------------------------------------------------------------------- seed 002, verbatim
class Net(nn.Module):
    def __init__(self):
        super(Net,self).__init__()
        # RNN
        self.rnn = nn.RNN(
            input_size = 1, # feature_len = 1
            hidden_size = 16, # 隐藏层记忆单元尺寸
            num_layers = 1,# 层数
            batch_first = True  # 确保输入时 按照[batch,seq_len,feature_len]的模式 1 x 50 x 1
        )

        #  对RNN 进行参数初始化
        for p in self.rnn.parameters():
            nn.init.normal_(p,mean=0.0,std=0.001)

        #  输出层 直接使用一个线性变换 吧每一个时刻的记忆单元的Hidden_len的输出为所需要的feature_len = 1 因为是一个数据点
        #  50 x 16 -> 50 x 1
        self.linear = nn.Linear(16,1)


    def forward(self,x,h):
        # 这里的out原始形状是 1 x 50 x 16 最后变成 50 x 16
        # h的原始形状是 1x 1  x 16
        out,h = self.rnn(x,h)
        # 因为最后需要传递给线性层处理,所以需要展平
        out = out.view(-1,16)
        out = self.linear(out)

        # 在把batch维度添加进去
        out = out.unsqueeze(dim=0)

        return out,h
# ------------------------------------------------------------------------------ end of seed


@torch.no_grad()
def seed_forecast(model, series, horizon, device="cpu"):
    """Seed 002's test loop from a zero state: the model runs over every point of ``series``
    (a list of floats); the last output is the first prediction, each prediction is the next
    input. Returns ``horizon`` floats. ``device``: where the model is (the seed's loop runs on
    the CPU; ``.cpu()`` before ``.numpy()`` is the only change for another device)."""
    h = torch.zeros(1, 1, 16, device=device)
    x = torch.tensor(series, dtype=torch.float32, device=device).view(1, len(series), 1)
    out, h = model(x, h)
    pred = out[:, -1:, :]  # (1, 1, 1)
    predictions = [pred.detach().data.cpu().numpy().ravel()[0]]
    for _ in range(horizon - 1):
        pred, h = model(pred, h)
        predictions.append(pred.detach().data.cpu().numpy().ravel()[0])
    return [float(p) for p in predictions]


class SeedVocab:
    """The part of d2l's ``Vocab`` that ``predict_ch8`` uses: unknown tokens map to 0."""

    def __init__(self, idx_to_token: list[str]) -> None:
        self.idx_to_token = idx_to_token
        self.token_to_idx = {token: idx for idx, token in enumerate(idx_to_token)}
        self.unk = 0

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, token: str) -> int:
        return self.token_to_idx.get(token, self.unk)
