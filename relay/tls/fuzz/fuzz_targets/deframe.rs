//! The deframer on arbitrary bytes: never panics, and its verdict is
//! consistent (a record fits the input, `needed` bytes complete it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_tls::deframe::{Deframed, RECORD_HEADER_LEN};
use relay_tls::{Version, deframe};

fuzz_target!(|data: &[u8]| {
    for version in [Version::Tls12, Version::Tls13] {
        match deframe(data, version) {
            Ok(Deframed::Record(h)) => assert!(RECORD_HEADER_LEN + h.len <= data.len()),
            Ok(Deframed::Incomplete { needed }) => {
                assert!(needed > 0);
                // Once the header is whole, `needed` is exact: that many more
                // bytes complete the record. (Before, it is a lower bound.)
                if data.len() >= RECORD_HEADER_LEN {
                    let mut longer = data.to_vec();
                    longer.resize(data.len() + needed, 0);
                    assert!(matches!(deframe(&longer, version), Ok(Deframed::Record(_))));
                }
            }
            Err(v) => {
                let _ = v.alert();
            }
        }
    }
});
