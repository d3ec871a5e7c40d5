"""Counterfactual data augmentation: the shipped pairs, tricky text, a replaceable list, and the
documents a run trains on."""
import pytest

from neojax.data.transforms import PAIRS, apply, build, read_pairs, swap_terms

SWAP = read_pairs()


@pytest.mark.parametrize("text,want", [
    ("he", "she"), ("She", "He"), ("HIM", "HER"), ("himself", "herself"),
    ("He gave her his book.", "She gave him her book."),            # her before a determiner: him; his + noun: her
    ("The book is his.", "The book is hers."), ("It is hers!", "It is his!"),  # standing alone
    ("I saw her at the park with her dog", "I saw him at the park with his dog"),
    ("the man's hat and the men's hats", "the woman's hat and the women's hats"),  # possessives
    ("Mr. Smith thanked Mrs. Jones", "Mrs. Smith thanked Mr. Jones"),
    ("my step-father and her mother-in-law", "my step-mother and his father-in-law"),  # hyphenated
    ("Heather and the theme: she'll go", "Heather and the theme: he'll go"),  # words inside words, contractions
    ("ManHattan, human, Shepherd, other", "ManHattan, human, Shepherd, other"),  # never part of a word
    ("KING and QUEENS", "QUEEN and KINGS"), ("John told Mary.", "Patricia told James."),
    ("no gendered words here", "no gendered words here"),
])
def test_swaps_keep_case_punctuation_and_word_boundaries(text, want):
    assert swap_terms(text, SWAP) == want


def test_the_shipped_list_is_a_bijection_and_swapping_twice_returns_the_words():
    assert all(SWAP[SWAP[w]] == w for w in SWAP)
    assert {"he", "she", "mother", "father", "king", "queen", "mr", "mrs", "james", "mary"} <= set(SWAP)
    for word in ("father", "Queen", "NIECES"):
        assert swap_terms(swap_terms(word, SWAP), SWAP) == word


def test_a_user_list_replaces_the_shipped_one_and_a_bad_one_names_its_line(tmp_path):
    mine = tmp_path / "pairs.txt"
    mine.write_text("# my list\ncat dog\n")
    swap = build("counterfactual", {"pairs": str(mine)})
    assert swap("The cat and the Dog. He left.") == "The dog and the Cat. He left."
    mine.write_text("cat dog\ndog wolf\n")
    with pytest.raises(ValueError, match="pairs.txt line 2: 'dog' is already in an earlier pair"):
        read_pairs(str(mine))
    mine.write_text("cat\n")
    with pytest.raises(ValueError, match="line 1: 'cat' is not two different words"):
        read_pairs(str(mine))
    assert read_pairs(PAIRS) == SWAP


def test_modes_also_and_instead():
    docs = ["He ran.", "The sky.", "Her cat."]
    swap = build("counterfactual", {})
    assert list(apply(docs, swap, "also")) == ["He ran.", "She ran.", "The sky.", "Her cat.", "His cat."]
    assert list(apply(docs, swap, "instead")) == ["She ran.", "The sky.", "His cat."]

