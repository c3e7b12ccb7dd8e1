//! Writes the seed corpora, `fuzz/corpus/<target>/<seed>`: real frames and messages made
//! by the crate itself (handshakes and data of a real session, signed relay
//! registrations, a client stack's TCP, UDP and ICMP packets, ARP and neighbour
//! solicitations in Ethernet frames). Files already there (crashes found earlier, kept as
//! regressions) are left alone. Usage: `gen_corpus [DIR]` (default `corpus`).

use std::fs;
use std::path::PathBuf;

use golem_vpn::Medium;
use golem_vpn_fuzz::{relay, router, stack, tunnel, wire_seeds};

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let (datagram, session) = tunnel::seeds();
    let sets = [
        ("wire", wire_seeds()),
        ("router_ip", router::seeds(Medium::Ip)),
        ("router_ethernet", router::seeds(Medium::Ethernet)),
        ("tunnel_datagram", datagram),
        ("tunnel_session", session),
        ("relay_server", relay::server_seeds()),
        ("relay_node", relay::node_seeds()),
        ("stack", stack::seeds()),
    ];
    for (target, seeds) in sets {
        let d = dir.join(target);
        fs::create_dir_all(&d)?;
        for (name, bytes) in &seeds {
            fs::write(d.join(format!("seed-{name}")), bytes)?;
        }
        println!("{target}: {} seeds", seeds.len());
    }
    Ok(())
}
