//! The eStargz / legacy stargz footer parser on arbitrary blob tails.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_fuse::format::estargz;

fuzz_target!(|tail: &[u8]| {
    if let Ok(footer) = estargz::parse_footer(tail) {
        assert!(
            footer.footer_size == estargz::FOOTER_SIZE
                || footer.footer_size == estargz::LEGACY_FOOTER_SIZE
        );
        let _ = footer.toc_range(tail.len() as u64);
    }
});
