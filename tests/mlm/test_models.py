"""The tiny BERT teacher built offline and the layer-selected student derived from it."""

import torch

from raykd.config.mlm import MLMStudentConfig
from raykd.mlm.masking import mlm_blocks, special_ids
from raykd.mlm.models import derive_bert_student


def test_tiny_bert_is_a_masked_lm_directory(bert_teacher):
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(bert_teacher).architectures == ["BertForMaskedLM"]
    tok = AutoTokenizer.from_pretrained(bert_teacher)
    assert tok.mask_token_id == 4 and special_ids(tok) == [0, 1, 2, 3, 4]
    blocks = mlm_blocks(["the king is dead. long live the king. " * 20], tok, 16)
    assert blocks.shape[1] == 16 and (blocks[:, 0] == tok.cls_token_id).all() and (blocks[:, -1] == tok.sep_token_id).all()


def test_student_copies_the_selected_teacher_layers(bert_teacher):
    from transformers import BertForMaskedLM

    teacher = BertForMaskedLM.from_pretrained(bert_teacher).state_dict()
    student = derive_bert_student(str(bert_teacher), MLMStudentConfig(num_layers=2, layer_selection="uniform"))
    s = student.state_dict()
    assert student.config.num_hidden_layers == 2
    key = "bert.encoder.layer.{}.attention.self.query.weight"
    assert torch.equal(s[key.format(0)], teacher[key.format(0)]) and torch.equal(s[key.format(1)], teacher[key.format(2)])
    assert torch.equal(s["bert.embeddings.word_embeddings.weight"], teacher["bert.embeddings.word_embeddings.weight"])
    last = derive_bert_student(str(bert_teacher), MLMStudentConfig(num_layers=1, layer_selection=[1]))
    assert torch.equal(last.state_dict()[key.format(0)], teacher[key.format(1)])
