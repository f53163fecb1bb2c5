import torch

from cmkd.models.heads.protonet import ProtoNet, prototypes


def test_scores_equal_closed_form():
    support = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 2.0]]])  # classes 0,0,1,1
    labels = torch.tensor([[0, 0, 1, 1]])
    query = torch.tensor([[[1.0, 1.0], [0.0, 3.0]]])
    # prototypes (1, 0) and (0, 3)
    assert torch.allclose(prototypes(support, labels, 2), torch.tensor([[[1.0, 0.0], [0.0, 3.0]]]))
    scores = ProtoNet()(support, labels, query, 2)
    expected = -torch.tensor([[[1.0, 1.0 + 4.0], [1.0 + 9.0, 0.0]]])
    assert torch.allclose(scores, expected)


def test_scores_invariant_to_support_order():
    g = torch.Generator().manual_seed(0)
    support = torch.randn(3, 10, 8, generator=g)
    labels = torch.arange(5).repeat_interleave(2).expand(3, -1)
    query = torch.randn(3, 7, 8, generator=g)
    perm = torch.randperm(10, generator=g)
    a = ProtoNet()(support, labels, query, 5)
    b = ProtoNet()(support[:, perm], labels[:, perm], query, 5)
    assert torch.allclose(a, b, atol=1e-5)


def test_batched_episodes_equal_one_by_one():
    g = torch.Generator().manual_seed(1)
    support, query = torch.randn(4, 5, 6, generator=g), torch.randn(4, 9, 6, generator=g)
    labels = torch.arange(5).expand(4, -1)
    batched = ProtoNet()(support, labels, query, 5)
    for e in range(4):
        assert torch.allclose(batched[e], ProtoNet()(support[e:e + 1], labels[e:e + 1], query[e:e + 1], 5)[0])
