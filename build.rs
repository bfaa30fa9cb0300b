// `sqlx::migrate!` embeds migrations/ at compile time: rebuild when a
// migration is added or changed (cargo would not notice on its own).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
