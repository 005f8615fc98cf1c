"""One study per chapter, each named after its question: 03 generation and denoising, 04 and 04b the
DIP-initialised DDPM, 05 guided early stopping, 06 the ablations, 07 the report's claims and the
conclusions, 08 the timing benchmark."""
