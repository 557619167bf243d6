// Entry point: one transfer as described by transfer.info in the working folder.
#include <exception>
#include <filesystem>
#include <iostream>
#include <string>

#include "client.hpp"

int main(int argc, char* argv[]) {
    try {
        if (argc > 1) {
            const std::string arg = argv[1];
            const bool help = arg == "-h" || arg == "--help";
            (help ? std::cout : std::cerr)
                << "usage: client\n"
                   "Sends the file named in transfer.info (working folder) to the server named there.\n"
                   "Registers on the first run (writes me.info and priv.key), reconnects on later runs.\n";
            return help ? 0 : 2;
        }
        return client::run(std::filesystem::current_path(), std::cout, std::cerr);
    } catch (const std::exception& error) {
        std::cerr << "Fatal: " << error.what() << '\n';
    } catch (...) {
        std::cerr << "Fatal: unexpected error\n";
    }
    return 1;
}
