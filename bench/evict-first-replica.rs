// bench/H2TLS.md, "The per-IP rate table under a flood of addresses": a
// replica of the rate table's eviction before session 43, timed.
// rustc -O bench/evict-first-replica.rs -o /tmp/evict && /tmp/evict
// Simulates PerIpRate's eviction at its bound: a std HashMap<u128, [u8;48]>
// of 65,536 entries; each new key removes `keys().next()` and inserts.
use std::collections::HashMap;
use std::time::Instant;
fn main() {
    let n: u128 = 65_536;
    let mut m: HashMap<u128, [u64; 6]> = HashMap::new();
    for k in 0..n { m.insert(k * 0x1_0000_0001, [0; 6]); }
    for round in 0..6 {
        let t = Instant::now();
        let per = 20_000u128;
        for k in 0..per {
            let old = *m.keys().next().unwrap();
            m.remove(&old);
            m.insert((n + round * per + k) * 0x1_0000_0001, [0; 6]);
        }
        println!("round {round}: {:.2} us per eviction, len {}", t.elapsed().as_secs_f64() * 1e6 / per as f64, m.len());
    }
}
