//! The policy loader on arbitrary text: errors with file:line:column, never a panic
//! (docs/threats.md T32; OpenSSH `cfgparse.sh`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match drawbridge::policy::Policy::from_toml("fuzz.toml", text) {
        Ok(policy) => {
            // A policy that loads can be evaluated: every host resolves to itself.
            for (name, host) in &policy.hosts {
                let resolved = policy.resolve_target(name, host.port).map(|h| &h.name);
                assert_eq!(resolved, Ok(name), "inventory host {name} does not resolve");
            }
        }
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
});
