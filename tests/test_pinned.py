"""The pinned-allocation settings keep what the user set and step aside when the user chose."""

from legaltune.speed.pinned import REGISTER_THREADS, fast_pinned_settings, use_fast_pinned_allocation


def test_settings_turn_registration_on_and_keep_the_users_own():
    ours = f"pinned_use_cuda_host_register:True,pinned_num_register_threads:{REGISTER_THREADS}"
    assert fast_pinned_settings("") == ours
    # parsing a settings string resets the keys it does not name: the user's must be in it
    assert fast_pinned_settings("expandable_segments:True") == f"expandable_segments:True,{ours}"


def test_a_users_own_pinned_choice_is_left_alone():
    assert fast_pinned_settings("pinned_use_cuda_host_register:False") is None
    assert fast_pinned_settings("expandable_segments:True,pinned_num_register_threads:4") is None


def test_nothing_is_applied_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert use_fast_pinned_allocation() is None
