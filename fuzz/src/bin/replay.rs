//! Runs inputs through a target without libFuzzer, in an ordinary build (a debugger and
//! `RUST_BACKTRACE` work as usual): `replay <target> <file>...`.

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_default();
    let Some((_, body)) = golem_vpn_fuzz::TARGETS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<_> = golem_vpn_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "usage: replay <target> <file>...; targets: {}",
            names.join(" ")
        );
        std::process::exit(2);
    };
    for file in args {
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        eprintln!("{file}: {} bytes", data.len());
        body(&data);
        eprintln!("{file}: ok");
    }
}
