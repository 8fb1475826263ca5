//! `kahuna-server`: parse the configuration, start the node, exit non-zero with the reason if
//! it cannot start.

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cfg = match kahuna_server::config::NodeConfig::from_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kahuna-server: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = kahuna_server::node::run(cfg) {
        eprintln!("kahuna-server: {e}");
        std::process::exit(1);
    }
}
