//! The embedded steer program passes the verifier and its maps match the
//! contract types (needs root: loading BPF programs).

use relay_common::{SteerConfig, Verdict};
use relay_datapath::SteerProgram;

#[test]
fn steer_program_loads_with_workers_dead_and_zero_counters() {
    let mut steer = SteerProgram::load().expect("load (run as root)");
    assert_eq!(steer.config().expect("config"), SteerConfig::default());
    let counts = steer.verdicts().expect("verdicts");
    for v in Verdict::ALL {
        assert_eq!(counts.get(v), 0, "{v:?}");
    }
    steer.set_workers_alive(true).expect("alive");
    assert_eq!(steer.config().expect("config").workers_alive, 1);
    steer.set_services(&[]).expect("empty service set");
}
