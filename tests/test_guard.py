from __future__ import annotations

import pytest
import torch

import dmcourse
from dmcourse.grading.guard import call_without_dmcourse, dmcourse_calls


def test_own_work_passes() -> None:
    assert call_without_dmcourse(lambda a, b: a @ b, torch.eye(2), torch.ones(2, 2)).sum() == 4


def test_calling_the_package_is_caught() -> None:
    _, seen = dmcourse_calls(lambda: dmcourse.pick_dtype("cpu"))
    assert "dmcourse.device.pick_dtype" in seen
    with pytest.raises(AssertionError, match="pick_dtype"):
        call_without_dmcourse(lambda: dmcourse.pick_dtype("cpu"))


def test_a_renamed_import_is_still_caught() -> None:
    from dmcourse.device import pick_dtype as my_own_function

    def student_answer(device):
        return my_own_function(device)

    with pytest.raises(AssertionError, match="course package"):
        call_without_dmcourse(student_answer, "cpu")
