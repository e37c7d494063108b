fn main() {
    println!("softvfio: under construction");
}
