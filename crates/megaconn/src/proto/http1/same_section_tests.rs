//! `same_section`, the header-section memo's compare (`head.rs`), against
//! `==`: every length a held section may have, every byte changed.
//!
//! The compare takes three ways (under eight bytes, `==`; up to
//! `SHORT_SECTION`, the last word and then a word at a time; past it, the
//! last word and then `bcmp`): each length and each place of a change goes
//! through one of them, and a section told the same when a byte differs
//! would be made from the memo with the held section's fields.

use super::{same_section, SHORT_SECTION};

/// The longest section the memo holds (`HeadMemo`'s buffer).
const MAX_HELD: usize = 512;

#[test]
fn a_section_is_the_same_only_when_every_byte_is() {
    // Bytes that differ from place to place, as a header section's do.
    let held: Vec<u8> = (0..MAX_HELD).map(|i| (i * 131 + 7) as u8).collect();
    for len in 0..=MAX_HELD {
        let a = &held[..len];
        let mut b = a.to_vec();
        assert!(same_section(a, &b), "length {len}: the same bytes");
        for at in 0..len {
            for flip in [0x01, 0x80] {
                b[at] ^= flip;
                assert!(
                    !same_section(a, &b),
                    "length {len}: byte {at} changed by {flip:#x} (the short path ends at {SHORT_SECTION})"
                );
                b[at] ^= flip;
            }
        }
    }
}
